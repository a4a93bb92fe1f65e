"""Prints the most host (CPU) tensor bytes alive at once while one process builds GPT as the
engine does (`build_model`), on the host or on "meta" (a device that is not host memory,
standing for the accelerator a GPU rank builds on).

Run: python tests/train/host_build_bytes.py host|meta override [override ...]
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from modtrain.config import load_config
from modtrain.parallel import init_distributed
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.engine import build_model
from tests.model.live_bytes import LiveBytes


def main(device: str, overrides: list[str]) -> None:
    config = load_config(None, overrides)
    topo = init_distributed()
    if device == "meta":
        topo = dataclasses.replace(topo, device=torch.device("meta"))
    with LiveBytes("cpu") as host:
        model = build_model(config, topo, deepspeed_config(config, 1, cuda=False))
    sizes = [p.numel() * p.element_size() for p in model.parameters()]
    print(f"built on {device}: peak host tensors {host.peak / 2**20:.2f} MiB, parameters "
          f"{sum(sizes) / 2**20:.2f} MiB, largest parameter {max(sizes) / 2**20:.2f} MiB")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
