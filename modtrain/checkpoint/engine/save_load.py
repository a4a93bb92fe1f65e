"""Atomic, resumable checkpoints on top of DeepSpeed's sharded checkpoint format.

The tag layout is checkpoint/format.py's.
Every rank writes into `.tmp-<tag>`; after a barrier the ranks hash the files, rank 0 writes
checksums.json, renames the folder to `<tag>` and only then rewrites `latest` (write +
rename), so a crash or kill -9 mid-save leaves the previous checkpoint intact and `latest`
pointing at it.

DeepSpeed reads its files with torch.load(weights_only=False), which runs whatever code a
pickle names: through its checkpoint engine, and past it in the universal converter
(ds_to_universal), the universal loader and ZeRO-3's universal path. So replacing
`engine.checkpoint_engine` would not be enough: while DeepSpeed loads or converts,
`weights_only_loads` makes every torch.load in the process a weights-only load that allows
the few DeepSpeed objects its checkpoints hold, and refuses anything else in one line.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from modtrain.checkpoint.files import (
    checksums,
    restricted_load,
    share,
    tag_files,
    write_manifest,
)
from modtrain.checkpoint.format import (
    DEEPSPEED_GLOBALS,
    LATEST,
    RECOVERY_SCRIPTS,
    STATE_FILE,
    TMP_PREFIX,
    CheckpointState,
    original_tag,
    step_of,
    tag_for,
    universal_tag,
)
from modtrain.checkpoint.tags import complete_tags, latest_tag, read_state
from modtrain.errors import ModtrainError
from modtrain.model.tensor_split import universal_checkpoint_info
from modtrain.parallel import collectives


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
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
        _remove_universal_copies(Path(checkpoint_dir), tag)
    return removed


def save(
    engine,
    checkpoint_dir: str | Path,
    state: CheckpointState,
    keep_last: int = 0,
    keep_every: int = 0,
) -> str:
    """Collective: every rank must call it. Returns the tag once `latest` points to it."""
    root = Path(checkpoint_dir)
    tag = tag_for(state.step)
    tmp = root / (TMP_PREFIX + tag)
    rank = dist.get_rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a save that crashed
    collectives.barrier()
    # How each parameter is split across tensor ranks, for DeepSpeed's universal-checkpoint
    # converter (resuming on another layout). It reads one stage's file, so that file must
    # describe the parameters of every pipeline stage.
    stage_names = collectives.gather_objects([n for n, _ in engine.module.named_parameters()])
    names = sorted({n for names in stage_names for n in names})
    client: dict[str, Any] = {"modtrain": state.to_json()}
    if not getattr(engine, "has_moe_layers", False):
        # DeepSpeed reserves this key in MoE checkpoints; those resume on their own layout.
        client["universal_checkpoint_info"] = universal_checkpoint_info(names)
    engine.save_checkpoint(str(root), tag=tmp.name, client_state=client, save_latest=False)
    torch.save(_rng_state(), tmp / f"rng_rank_{rank:05d}.pt")
    if rank == 0:
        _write_atomic(tmp / STATE_FILE, json.dumps(state.to_json(), indent=1))
    collectives.barrier()  # every rank's shards are on disk
    files = _hash_together(tmp)
    if rank == 0:
        for script in RECOVERY_SCRIPTS:  # they unpickle freely; `modtrain convert` is safe
            (tmp / script).unlink(missing_ok=True)
            (root / script).unlink(missing_ok=True)  # where DeepSpeed's MoE save puts them
        write_manifest(tmp, files)
        final = root / tag
        if final.exists():  # the same step saved again (e.g. a resumed run re-reaching it)
            shutil.rmtree(final)
        _remove_universal_copies(root, tag)  # made from an earlier save of this step
        os.replace(tmp, final)
        fsync_dir(root)
        _write_atomic(root / LATEST, tag)
        prune(root, keep_last, keep_every)
    collectives.barrier()
    return tag


def _hash_together(tag_dir: Path) -> dict[str, dict[str, Any]]:
    """Collective: every rank hashes a share of the tag's files (as rank 0 lists them, the
    rank that renames the tag); all get every checksum."""
    names: list[str] = collectives.broadcast_object(
        tag_files(tag_dir) if dist.get_rank() == 0 else [])
    mine = checksums(tag_dir, share(names, dist.get_rank(), dist.get_world_size()))
    parts = collectives.gather_objects(mine)
    return {name: entry for part in parts for name, entry in part.items()}


def _deepspeed_globals() -> list[Any]:
    """The objects DEEPSPEED_GLOBALS names (imported: DeepSpeed's loaders need them real)."""
    out = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module), attr))
    return out


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within it, torch.load is a weights-only load allowing DEEPSPEED_GLOBALS, whatever its
    caller passes as weights_only; a file pickling anything else raises ModtrainError."""
    allowed = _deepspeed_globals()

    original = torch.load

    def load(f, map_location=None, **kwargs):
        kwargs.pop("weights_only", None)
        return restricted_load(f, allowed, original, map_location=map_location, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


T = TypeVar("T")


def on_rank0(fn: Callable[[], T]) -> T:
    """Collective: rank 0 runs `fn`, the others wait; every rank returns its result, or raises
    its ModtrainError (so no rank is left waiting in a barrier)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    outcome: Any = None
    if dist.get_rank() == 0:
        try:
            outcome = ("ok", fn())
        except ModtrainError as e:
            outcome = ("error", str(e))
    kind, value = collectives.broadcast_object(outcome)
    if kind == "error":
        raise ModtrainError(value)
    return value


def _remove_universal_copies(root: Path, tag: str) -> None:
    for pipeline in (False, True):
        shutil.rmtree(root / universal_tag(tag, pipeline), ignore_errors=True)


def _check_expert_parallel_size(engine, state: CheckpointState, tag: str) -> None:
    """Experts' optimizer state is partitioned over their expert data-parallel group, whose
    size follows parallel.expert: a checkpoint loads only with the size it was saved with."""
    saved = state.config.get("parallel", {}).get("expert", 1)
    sizes = {m.ep_size for m in engine.module.modules() if hasattr(m, "deepspeed_moe")}
    current = sizes.pop() if sizes else 1
    if saved != current:
        raise ModtrainError(
            f"checkpoint {tag} was saved with parallel.expert={saved} and this run has "
            f"parallel.expert={current}: expert checkpoints resume only on the layout they "
            f"were saved with; set parallel.expert={saved}")


_SIZE_MISMATCH = re.compile(r"size mismatch for ([^:]+): copying a param with shape "
                            r"torch\.Size\((\[[^\]]*\])\) from checkpoint, the shape in "
                            r"current model is torch\.Size\((\[[^\]]*\])\)")


def state_dict_mismatch(message: str, tag_dir: Path, shown: int = 3) -> str:
    """torch's many-line load_state_dict error as one line: the first differing keys and
    their shapes (saved -> this model), and how many keys are missing or unexpected."""
    sizes = _SIZE_MISMATCH.findall(message)
    parts = [f"{key} {saved} -> {now}" for key, saved, now in sizes[:shown]]
    if len(sizes) > shown:
        parts.append(f"and {len(sizes) - shown} more")
    for kind in ("Missing", "Unexpected"):
        found = re.search(rf'{kind} key\(s\) in state_dict: ((?:"[^"]+"(?:, )?)+)', message)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} {kind.lower()} keys ({', '.join(keys[:shown])}"
                         + (", ..." if len(keys) > shown else "") + ")")
    return (f"{tag_dir} was saved from another model shape: {'; '.join(parts)}; resume with "
            "the model.* settings of that run (its config.yaml) or train into a new run.dir")


def load(engine, checkpoint_dir: str | Path, tag: str, same_layout: bool) -> CheckpointState:
    """Load `tag` into `engine`; restore this rank's RNG when the layout is unchanged."""
    root = Path(checkpoint_dir)
    _check_expert_parallel_size(engine, read_state(root, original_tag(tag)), tag)
    try:
        with weights_only_loads():
            path, _ = engine.load_checkpoint(str(root), tag=tag)
    except RuntimeError as e:
        if "Error(s) in loading state_dict" not in str(e):
            raise
        raise ModtrainError(state_dict_mismatch(str(e), root / tag)) from None
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint {root / tag}")
    source = original_tag(tag)
    rng_file = root / source / f"rng_rank_{dist.get_rank():05d}.pt"
    if same_layout and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return read_state(root, source)
