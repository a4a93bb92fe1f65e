"""Where inference runs: the --device and --dtype options as a torch device and dtype."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from modtrain.errors import ModtrainError

if TYPE_CHECKING:
    import torch

# torch is imported where a device or dtype is resolved: the options register without it.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICE_HELP = ("cpu (the default, so that a seed reproduces the same text anywhere), cuda or "
               "cuda:N")
DTYPE_HELP = ("fp32 (the default), bf16 or fp16; routing scores and top-k stay fp32 "
              "whatever the dtype")


def resolve_device(name: str) -> torch.device:
    """cpu, cuda or cuda:N as a torch device that exists here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModtrainError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N"
                            ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ModtrainError(f"--device {name}: inference runs on cpu or cuda; use cpu, cuda "
                            "or cuda:N")
    if not torch.cuda.is_available():
        raise ModtrainError(f"--device {name}: no CUDA device is visible to this torch "
                            f"({torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        raise ModtrainError(f"--device {name}: this machine has {count} CUDA device(s), "
                            f"cuda:0 to cuda:{count - 1}; pick one of those")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """fp32, bf16 or fp16 as a torch dtype that `device` computes in."""
    import torch

    if name not in DTYPES:
        raise ModtrainError(f"--dtype {name!r} is unknown; use one of {', '.join(DTYPES)}")
    dtype = getattr(torch, DTYPES[name])
    if device.type == "cuda" and dtype == torch.bfloat16 and \
            not torch.cuda.is_bf16_supported():
        raise ModtrainError(f"--dtype bf16: {torch.cuda.get_device_name(device)} does not "
                            "compute in bf16; use --dtype fp16 or fp32")
    return dtype


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype of the commands that run an export (generate, routing)."""
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help=DTYPE_HELP)
