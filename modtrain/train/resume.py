"""Which checkpoint a run resumes from, and how (same layout, or another data-parallel size)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modtrain.errors import ModtrainError
from modtrain.train import checkpoint


@dataclass(frozen=True)
class ResumePlan:
    tag: str  # the tag DeepSpeed loads (a universal copy when the layout changed)
    step: int
    same_layout: bool
    universal: bool


def current_layout(tensor: int, pipeline: int, data: int, zero_stage: int) -> dict[str, int]:
    return {"tensor": tensor, "pipeline": pipeline, "data": data, "zero_stage": zero_stage}


def plan_resume(checkpoint_dir: Path, layout: dict[str, int]) -> ResumePlan | None:
    """None when there is nothing to resume; raises on a layout that cannot be loaded."""
    tag = checkpoint.latest_tag(checkpoint_dir)
    if tag is None:
        return None
    if not (checkpoint_dir / tag / checkpoint.STATE_FILE).is_file():
        raise ModtrainError(
            f"{checkpoint_dir / 'latest'} names {tag}, which is not a complete modtrain "
            "checkpoint; point 'latest' at a complete step_* directory"
        )
    saved = checkpoint.read_state(checkpoint_dir, tag)["layout"]
    if saved["pipeline"] != layout["pipeline"] or (
        saved["tensor"] != layout["tensor"] and layout["pipeline"] > 1
    ):
        raise ModtrainError(
            f"{checkpoint_dir / tag} was written with parallel.tensor={saved['tensor']} "
            f"parallel.pipeline={saved['pipeline']}, this run has "
            f"parallel.tensor={layout['tensor']} parallel.pipeline={layout['pipeline']}; a "
            "pipeline-parallel checkpoint resumes only on its own pipeline and tensor sizes: "
            f"resume with parallel.pipeline={saved['pipeline']} parallel.tensor={saved['tensor']}"
        )
    if saved["data"] != layout["data"] and layout["pipeline"] > 1:
        raise ModtrainError(
            f"{checkpoint_dir / tag} was written with {saved['data']} data-parallel ranks; "
            "resuming a pipeline-parallel run needs the same number, launch "
            f"{saved['data'] * layout['tensor'] * layout['pipeline']} processes"
        )
    # ZeRO partitions optimizer state by data-parallel rank and tensor parallelism splits
    # weights: another size of either loads through DeepSpeed's universal checkpoint, which
    # holds every parameter and its optimizer state whole.
    universal = (saved["data"] != layout["data"] and saved["zero_stage"] > 0) or (
        saved["tensor"] != layout["tensor"]
    )
    if saved["zero_stage"] != layout["zero_stage"] and not universal:
        raise ModtrainError(
            f"{checkpoint_dir / tag} was written with train.zero_stage={saved['zero_stage']}; "
            f"resume with train.zero_stage={saved['zero_stage']}"
        )
    same = saved == layout
    step = checkpoint.step_of(tag)
    if universal:
        tag = checkpoint.convert_to_universal(checkpoint_dir, tag)
    return ResumePlan(tag=tag, step=step, same_layout=same, universal=universal)
