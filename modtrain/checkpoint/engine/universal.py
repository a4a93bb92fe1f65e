"""DeepSpeed universal checkpoints: the copy of a tag that loads on another parallel layout.

`.universal[-pipeline]-<tag>/` holds every parameter and its optimizer state whole, one
folder per parameter, named for the model that will load it (pipeline layers or GPT). It is
built from a tag that verifies, in a temporary folder, with checksums over every file of the
tree, and it is verified again before a run loads it; a damaged copy is rebuilt from its tag.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modtrain.checkpoint.engine.save_load import fsync_dir, on_rank0, weights_only_loads
from modtrain.checkpoint.files import (
    Problem,
    check_files,
    checksums,
    read_manifest,
    write_manifest,
)
from modtrain.checkpoint.format import MANIFEST, TMP_PREFIX, universal_tag
from modtrain.checkpoint.tags import read_state
from modtrain.errors import ModtrainError
from modtrain.model.param_table import gpt_name, pipeline_name

# Above this size on disk a tag is not converted inside a training job: the other ranks
# would wait for rank 0 under the process-group timeout, and a requeued job would start
# the conversion again. `modtrain checkpoint universal` converts it before the launch.
IN_JOB_LIMIT_BYTES = 16 << 30


def tree_files(root: Path) -> list[str]:
    """Every file under `root` but its manifest, as paths relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root) != Path(MANIFEST))


def check_copy(target: Path) -> list[Problem]:
    """Problems of a universal copy against its checksums (a copy without them, written
    before modtrain recorded them, is damaged: it is rebuilt from its tag)."""
    try:
        recorded = read_manifest(target)
    except ValueError as e:
        return [Problem("damaged", str(e))]
    if recorded is None:
        return [Problem("damaged", f"{target.name} has no {MANIFEST}")]
    names = sorted(set(recorded) | set(tree_files(target)))
    return check_files(target, names, recorded)


def _workers() -> int:
    """Converter processes. They must inherit the weights-only torch.load: only a forked
    child does (a spawned one imports torch afresh), so anything but fork gets one."""
    if multiprocessing.get_start_method(allow_none=False) != "fork":
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _rename_parameters(zero_dir: Path, rename: dict[str, str]) -> None:
    """Rename the per-parameter folders of a universal checkpoint's `zero/`."""
    for old, new in rename.items():
        if old != new and (zero_dir / old).is_dir():
            os.replace(zero_dir / old, zero_dir / new)


def write_universal(checkpoint_dir: str | Path, tag: str, pipeline: bool,
                    log: Callable[[str], None] = lambda _: None) -> Path:
    """Write `tag` as a universal checkpoint named for the target model: pipeline layers
    when `pipeline`, else GPT. Not collective; idempotent (a copy that verifies is kept, a
    damaged one rebuilt); atomic (built in a temporary folder). The caller verifies `tag`."""
    root = Path(checkpoint_dir)
    target = root / universal_tag(tag, pipeline)
    if target.is_dir():
        problems = check_copy(target)
        unsafe = [p.text for p in problems if p.kind == "unsafe"]
        if unsafe:
            raise ModtrainError(unsafe[0])
        if not problems:
            return target
        log(f"{target} is damaged ({problems[0].text}); rebuilding it from {tag}")
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    state = read_state(root, tag)
    model = state.model
    saved_pipeline = state.saved_layout(str(root / tag)).pipeline > 1
    tmp = root / (TMP_PREFIX + target.name)
    shutil.rmtree(tmp, ignore_errors=True)
    workers = _workers()
    with weights_only_loads():  # forked workers inherit it (see _workers)
        ds_to_universal(Namespace(
            input_folder=str(root / tag), output_folder=str(tmp),
            num_extract_workers=workers, num_merge_workers=max(1, workers // 2),
            keep_temp_folder=False, strict=True, inject_missing_state=False,
        ))
    # DeepSpeed also writes `latest_universal` naming the temporary folder; modtrain always
    # passes the tag, so a pointer would only mislead.
    (root / "latest_universal").unlink(missing_ok=True)
    zero = tmp / "zero"
    # Pipeline layers are numbered globally, so only pipeline <-> flat changes names.
    folders = [p.name for p in zero.iterdir() if p.is_dir()]
    if saved_pipeline and not pipeline:
        _rename_parameters(zero, {n: gpt_name(n, model["num_layers"]) for n in folders})
    elif pipeline and not saved_pipeline:
        _rename_parameters(zero, {
            n: pipeline_name(n, model["num_layers"], model["tie_embeddings"]) for n in folders
        })
    write_manifest(tmp, checksums(tmp, tree_files(tmp)))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    fsync_dir(root)
    return target


def _tag_bytes(tag_dir: Path) -> int:
    return sum(p.stat().st_size for p in tag_dir.iterdir() if p.is_file())


def convert_in_job(checkpoint_dir: str | Path, tag: str, pipeline: bool, pipeline_size: int,
                   log: Callable[[str], None] = lambda _: None) -> str:
    """Collective: rank 0 writes (or verifies) the universal copy of `tag`, the others wait.
    Refuses a tag too large to convert while the job's other ranks wait. Returns the tag
    DeepSpeed loads."""
    root = Path(checkpoint_dir)

    def convert() -> Any:
        target = root / universal_tag(tag, pipeline)
        size = _tag_bytes(root / tag)
        if not target.is_dir() and size > IN_JOB_LIMIT_BYTES:
            raise ModtrainError(
                f"{root / tag} ({size / 2**30:.1f} GiB) needs a universal checkpoint for this "
                f"layout, too large to convert while the job's ranks wait; convert it first: "
                f"modtrain checkpoint universal {root} --tag {tag} --pipeline {pipeline_size}")
        return str(write_universal(root, tag, pipeline, log))

    on_rank0(convert)
    return universal_tag(tag, pipeline)
