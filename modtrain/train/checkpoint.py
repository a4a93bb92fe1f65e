"""Atomic, resumable checkpoints on top of DeepSpeed's sharded checkpoint format.

RUN/checkpoints/
  step_00001000/            one complete checkpoint (a DeepSpeed tag directory):
    mp_rank_*_model_states.pt, *optim_states.pt   DeepSpeed's model and ZeRO-sharded states
    rng_rank_00000.pt ...   torch RNG state of every rank (loaded with weights_only=True)
    modtrain.json           step, data-loader state, resolved config, parallel layout
  latest                    the tag of the newest complete checkpoint
Every rank writes into `.tmp-<tag>`; after a barrier rank 0 renames it to `<tag>` and only
then rewrites `latest` (write + rename), so a crash or kill -9 mid-save leaves the previous
checkpoint intact and `latest` pointing at it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from modtrain.parallel.tensor_layout import universal_checkpoint_info

TMP_PREFIX = ".tmp-"
UNIVERSAL_PREFIX = ".universal-"
STATE_FILE = "modtrain.json"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.removeprefix("step_"))


def latest_tag(checkpoint_dir: str | Path) -> str | None:
    pointer = Path(checkpoint_dir) / "latest"
    return pointer.read_text().strip() if pointer.is_file() else None


def read_state(checkpoint_dir: str | Path, tag: str) -> dict[str, Any]:
    """modtrain's own state of one checkpoint (JSON, no pickle)."""
    return json.loads((Path(checkpoint_dir) / tag / STATE_FILE).read_text())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def complete_tags(checkpoint_dir: str | Path) -> list[str]:
    """Tags of complete checkpoints, oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def prune(checkpoint_dir: str | Path, keep_last: int, keep_every: int) -> list[str]:
    """Delete complete checkpoints outside the last `keep_last` and multiples of `keep_every`."""
    tags = complete_tags(checkpoint_dir)
    latest = latest_tag(checkpoint_dir)
    keep = set(tags[-keep_last:]) if keep_last > 0 else set(tags)
    if keep_every > 0:
        keep |= {t for t in tags if step_of(t) % keep_every == 0}
    if latest is not None:
        keep.add(latest)
    removed = [t for t in tags if t not in keep]
    for tag in removed:
        shutil.rmtree(Path(checkpoint_dir) / tag, ignore_errors=True)
        shutil.rmtree(Path(checkpoint_dir) / (UNIVERSAL_PREFIX + tag), ignore_errors=True)
    return removed


def save(
    engine,
    checkpoint_dir: str | Path,
    step: int,
    state: dict[str, Any],
    keep_last: int = 0,
    keep_every: int = 0,
) -> str:
    """Collective: every rank must call it. Returns the tag once `latest` points to it."""
    root = Path(checkpoint_dir)
    tag = tag_for(step)
    tmp = root / (TMP_PREFIX + tag)
    rank = dist.get_rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a save that crashed
    dist.barrier()
    # How each parameter is split across tensor ranks, for DeepSpeed's universal-checkpoint
    # converter (resuming on another data- or tensor-parallel size).
    names = [n for n, _ in engine.module.named_parameters()]
    client = {"modtrain": state, "universal_checkpoint_info": universal_checkpoint_info(names)}
    engine.save_checkpoint(str(root), tag=tmp.name, client_state=client, save_latest=False)
    torch.save(_rng_state(), tmp / f"rng_rank_{rank:05d}.pt")
    if rank == 0:
        _write_atomic(tmp / STATE_FILE, json.dumps(state, indent=1))
    dist.barrier()  # every rank's shards are on disk
    if rank == 0:
        final = root / tag
        if final.exists():  # the same step saved again (e.g. a resumed run re-reaching it)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        _write_atomic(root / "latest", tag)
        prune(root, keep_last, keep_every)
    dist.barrier()
    return tag


def convert_to_universal(checkpoint_dir: str | Path, tag: str) -> str:
    """DeepSpeed universal checkpoint of `tag` (for loading at another data-parallel size)."""
    root = Path(checkpoint_dir)
    target = UNIVERSAL_PREFIX + tag
    if dist.get_rank() == 0 and not (root / target / "zero").is_dir():
        from argparse import Namespace

        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        tmp = root / (TMP_PREFIX + target)
        shutil.rmtree(tmp, ignore_errors=True)
        ds_to_universal(Namespace(
            input_folder=str(root / tag), output_folder=str(tmp), num_extract_workers=1,
            num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False,
        ))
        shutil.rmtree(root / target, ignore_errors=True)
        os.replace(tmp, root / target)
    dist.barrier()
    return target


def load(engine, checkpoint_dir: str | Path, tag: str, same_layout: bool) -> dict[str, Any]:
    """Load `tag` into `engine`; restore this rank's RNG when the layout is unchanged."""
    root = Path(checkpoint_dir)
    path, _ = engine.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint {root / tag}")
    original_tag = tag.removeprefix(UNIVERSAL_PREFIX)
    rng_file = root / original_tag / f"rng_rank_{dist.get_rank():05d}.pt"
    if same_layout and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return read_state(root, original_tag)
