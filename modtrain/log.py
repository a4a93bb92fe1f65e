"""modtrain's messages on stderr: notes, `modtrain: warning: ...` and `modtrain: error: ...`.

Every rank of a job runs the same code, so a warning written by each would appear N times
in a job log; `note` and `warning` write on the first rank only unless told otherwise.
Errors are written by every rank that has one (which rank failed is part of the message).
Terminal renderers (the training progress line, the data-preparation counters, tqdm bars)
write their own lines.
"""

from __future__ import annotations

import os
import sys

# What each launcher calls the global rank, read before torch.distributed exists.
_RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def rank() -> int:
    """This process's global rank: torch.distributed's once started (never imported here,
    the command line stays fast), else the launcher's variable, else 0."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for name in _RANK_VARS:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def note(text: str, *, every_rank: bool = False, end: str = "\n") -> None:
    """A plain line for the user (what was done, what is assumed)."""
    if every_rank or rank() == 0:
        print(text, end=end, file=sys.stderr, flush=True)


def warning(text: str, *, every_rank: bool = False) -> None:
    note(f"modtrain: warning: {text}", every_rank=every_rank)


def error(text: str) -> None:
    print(f"modtrain: error: {text}", file=sys.stderr, flush=True)
