"""Write a safetensors file one tensor at a time, byte for byte what safetensors' save_file
writes for the same tensors (its header, then every tensor's bytes in header order)."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from types import TracebackType

import torch

# safetensors' dtype names for the dtypes an export holds.
DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def header(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
           metadata: dict[str, str] | None = None) -> tuple[bytes, dict[str, int], int]:
    """(8-byte length + JSON header, each tensor's data offset, data bytes) of a file of
    `shapes`, all of `dtype`. safetensors orders tensors by dtype, then name (one dtype
    here), writes the JSON compact with __metadata__ first, and pads it with spaces to a
    multiple of 8 bytes."""
    size = torch.empty((), dtype=dtype).element_size()
    entries: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offsets: dict[str, int] = {}
    pos = 0
    for name in sorted(shapes):
        nbytes = math.prod(shapes[name]) * size
        entries[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shapes[name]),
                         "data_offsets": [pos, pos + nbytes]}
        offsets[name] = pos
        pos += nbytes
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offsets, pos


class SafetensorsWriter:
    """with SafetensorsWriter(path, shapes, dtype) as w: w.write(name, tensor) for every
    name, in any order; the file is complete when the block ends without error."""

    def __init__(self, path: str | Path, shapes: dict[str, tuple[int, ...]],
                 dtype: torch.dtype, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.shapes = dict(shapes)
        self.dtype = dtype
        head, self.offsets, data_bytes = header(self.shapes, dtype, metadata)
        self.data_start = len(head)
        self.missing = set(self.shapes)
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        self.file.write(head)
        self.file.truncate(self.data_start + data_bytes)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if tuple(tensor.shape) != self.shapes[name] or tensor.dtype != self.dtype:
            raise ValueError(f"{name} is {tuple(tensor.shape)} {tensor.dtype}, the header "
                             f"says {self.shapes[name]} {self.dtype}")
        self.file.seek(self.data_start + self.offsets[name])
        # Little-endian raw bytes (as safetensors writes them), no copy of a contiguous tensor.
        self.file.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self.missing.discard(name)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.file.close()
        if kind is None and self.missing:
            os.unlink(self.path)
            raise ValueError(f"{len(self.missing)} tensors were never written, e.g. "
                             f"{sorted(self.missing)[0]}")
