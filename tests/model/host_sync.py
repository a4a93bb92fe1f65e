"""Records the aten ops a region runs and names those that wait for the host (a device sync)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# Ops whose output size or value the host must read from the device before going on.
SYNCING = {aten.nonzero.default, aten._local_scalar_dense.default, aten.masked_select.default,
           aten.bincount.default, aten.unique_dim.default, aten._unique2.default,
           aten.item.default}


def _bool_index(func, args) -> bool:
    """Boolean-mask indexing (x[mask], x[mask] = v) runs a nonzero inside the kernel."""
    if func not in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        return False
    return any(i is not None and i.dtype == torch.bool for i in args[1])


class HostSyncs(TorchDispatchMode):
    """with HostSyncs() as syncs: ...; then syncs.found lists the syncing ops run."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING or _bool_index(func, args):
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))
