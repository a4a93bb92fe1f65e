"""Which checkpoint a run resumes from, and how (same layout, or through a universal
checkpoint when the parallel layout changed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modtrain.errors import ModtrainError
from modtrain.run_dir import STATE_FILE, latest_tag, read_state, step_of
from modtrain.train import checkpoint


@dataclass(frozen=True)
class ResumePlan:
    tag: str  # the tag DeepSpeed loads (a universal copy when the layout changed)
    step: int
    same_layout: bool
    universal: bool


def current_layout(tensor: int, pipeline: int, data: int, zero_stage: int) -> dict[str, int]:
    return {"tensor": tensor, "pipeline": pipeline, "data": data, "zero_stage": zero_stage}


def _describe(layout: dict[str, int]) -> str:
    return (f"parallel.tensor={layout['tensor']} parallel.pipeline={layout['pipeline']} "
            f"data-parallel={layout['data']} train.zero_stage={layout['zero_stage']}")


def needs_universal(saved: dict[str, int], layout: dict[str, int]) -> bool:
    """Whether `saved` loads into `layout` only through a universal checkpoint."""
    # ZeRO partitions optimizer state by data-parallel rank, tensor parallelism splits
    # weights, pipeline parallelism splits layers: another size of any of them loads through
    # DeepSpeed's universal checkpoint, which holds every parameter and its optimizer state
    # whole. Without ZeRO every data-parallel rank holds all of it, so DP alone may change.
    return (
        saved["tensor"] != layout["tensor"]
        or saved["pipeline"] != layout["pipeline"]
        or (saved["data"] != layout["data"] and saved["zero_stage"] > 0)
    )


def plan_resume(checkpoint_dir: Path, layout: dict[str, int],
                log: Callable[[str], None] = lambda _: None) -> ResumePlan | None:
    """None when there is nothing to resume; raises on a layout that cannot be loaded.
    Collective when the layout changed: rank 0 converts, the others wait."""
    tag = latest_tag(checkpoint_dir)
    if tag is None:
        return None
    if not (checkpoint_dir / tag / STATE_FILE).is_file():
        raise ModtrainError(
            f"{checkpoint_dir / 'latest'} names {tag}, which is not a complete modtrain "
            "checkpoint; point 'latest' at a complete step_* directory"
        )
    saved = read_state(checkpoint_dir, tag)["layout"]
    universal = needs_universal(saved, layout)
    if universal and min(saved["zero_stage"], layout["zero_stage"]) == 0:
        # DeepSpeed writes and loads universal checkpoints through its ZeRO optimizer only.
        stage = "saved with" if saved["zero_stage"] == 0 else "resumed with"
        raise ModtrainError(
            f"{checkpoint_dir / tag} ({_describe(saved)}) cannot be loaded by this run "
            f"({_describe(layout)}): a layout change goes through a universal checkpoint, "
            f"which needs ZeRO, and this checkpoint is {stage} train.zero_stage=0; "
            + ("resume on the saved layout" if saved["zero_stage"] == 0
               else "resume with train.zero_stage=1")
        )
    if universal and (saved["zero_stage"] == 3) != (layout["zero_stage"] == 3):
        # ZeRO-3 universal checkpoints carry per-rank model files that ZeRO 1/2 engines do
        # not read, and the other way round (DeepSpeed fails deep inside its loader).
        raise ModtrainError(
            f"{checkpoint_dir / tag} ({_describe(saved)}) cannot be loaded by this run "
            f"({_describe(layout)}): DeepSpeed's universal checkpoints do not cross between "
            f"ZeRO-3 and ZeRO-1/2; resume with train.zero_stage={saved['zero_stage']}"
        )
    if saved["zero_stage"] != layout["zero_stage"] and not universal:
        raise ModtrainError(
            f"{checkpoint_dir / tag} was written with train.zero_stage={saved['zero_stage']}; "
            f"resume with train.zero_stage={saved['zero_stage']}"
        )
    same = saved == layout
    step = step_of(tag)
    if universal:
        pipeline = layout["pipeline"] > 1
        if not (checkpoint_dir / checkpoint.universal_tag(tag, pipeline) / "zero").is_dir():
            log(f"layout changed ({_describe(saved)} -> {_describe(layout)}): converting {tag} "
                "to a universal checkpoint on rank 0; for a large model convert before "
                f"launching: modtrain checkpoint universal {checkpoint_dir} --tag {tag} "
                f"--pipeline {layout['pipeline']}")
        tag = checkpoint.convert_to_universal(checkpoint_dir, tag, pipeline)
    return ResumePlan(tag=tag, step=step, same_layout=same, universal=universal)
