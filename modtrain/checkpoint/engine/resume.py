"""Which checkpoint a run resumes from, and how (same layout, or through a universal
checkpoint when the parallel layout changed).

The tag `latest` names is checked first (files against their saved checksums, pickles
against the allow-list); a damaged one is skipped for the newest older tag that verifies,
saying which and why, unless run.resume_fallback=false. A file that pickles code is never
skipped past: the run stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from modtrain.checkpoint.engine.universal import convert_in_job
from modtrain.checkpoint.files import Problem, check_tag
from modtrain.checkpoint.format import (
    LATEST,
    STATE_FILE,
    CheckpointLayout,
    step_of,
    universal_tag,
)
from modtrain.checkpoint.tags import candidate_tags, read_state
from modtrain.config.schema import ModelConfig
from modtrain.errors import ModtrainError
from modtrain.parallel import collectives


@dataclass(frozen=True)
class ResumePlan:
    tag: str  # the tag DeepSpeed loads (a universal copy when the layout changed)
    step: int
    same_layout: bool
    universal: bool


def current_layout(tensor: int, pipeline: int, data: int, zero_stage: int
                   ) -> CheckpointLayout:
    return CheckpointLayout(tensor=tensor, pipeline=pipeline, data=data, zero_stage=zero_stage)


def _describe(layout: CheckpointLayout) -> str:
    return (f"parallel.tensor={layout.tensor} parallel.pipeline={layout.pipeline} "
            f"data-parallel={layout.data} train.zero_stage={layout.zero_stage}")


def needs_universal(saved: CheckpointLayout, layout: CheckpointLayout) -> bool:
    """Whether `saved` loads into `layout` only through a universal checkpoint."""
    # ZeRO partitions optimizer state by data-parallel rank, tensor parallelism splits
    # weights, pipeline parallelism splits layers: another size of any of them loads through
    # DeepSpeed's universal checkpoint, which holds every parameter and its optimizer state
    # whole. Without ZeRO every data-parallel rank holds all of it, so DP alone may change.
    return (
        saved.tensor != layout.tensor
        or saved.pipeline != layout.pipeline
        or (saved.data != layout.data and saved.zero_stage > 0)
    )


def context_notes(saved_model: dict, model: ModelConfig) -> list[str]:
    """Warnings for a resume at a longer context. model.max_seq_length, data.seq_length,
    rope_base and rope_scaling may change on resume (the RoPE table holds no weights); a
    longer context with unscaled angles at the same base meets positions never trained."""
    saved = int(saved_model.get("max_seq_length", model.max_seq_length))
    scaled = model.rope_scaling.type != "none"
    same_base = float(saved_model.get("rope_base", model.rope_base)) == model.rope_base
    if model.max_seq_length <= saved or scaled or not same_base:
        return []
    return [f"model.max_seq_length grew from {saved} (the checkpoint's) to "
            f"{model.max_seq_length} with model.rope_scaling.type=none: positions past {saved} "
            "were never trained; set model.rope_scaling (type linear or ntk, factor "
            f"{model.max_seq_length / saved:g}, original_max_seq_length {saved}), "
            "docs/long_context.md"]


def _check_together(tag_dir: Path) -> tuple[list[Problem], bool]:
    """Collective when distributed: each rank checks a share of the files, all get every
    problem (and so all take the same decision)."""
    if not dist.is_initialized():
        return check_tag(tag_dir)
    problems, verified = check_tag(tag_dir, dist.get_rank(), dist.get_world_size())
    parts = collectives.gather_objects(problems)
    return [p for part in parts for p in part], verified


def _why_not(checkpoint_dir: Path, tag: str, log: Callable[[str], None]) -> str | None:
    """Why `tag` cannot be resumed from (None: it can); raises on a file that pickles code."""
    tag_dir = checkpoint_dir / tag
    if not (tag_dir / STATE_FILE).is_file():
        return (f"{checkpoint_dir / LATEST} names {tag}, which is not a complete modtrain "
                "checkpoint")
    problems, verified = _check_together(tag_dir)
    for problem in problems:
        if problem.kind == "unsafe":
            raise ModtrainError(problem.text)
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        return f"{tag} is damaged ({problems[0].text}{more})"
    if not verified:
        log(f"{tag} has no checksums (saved before modtrain recorded them): not verified")
    return None


def _latest_text(checkpoint_dir: Path) -> str | None:
    """What `latest` holds, whatever it is (None: no such file)."""
    try:
        return (checkpoint_dir / LATEST).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None


def choose_tag(checkpoint_dir: Path, fallback: bool = True,
               log: Callable[[str], None] = lambda _: None) -> str | None:
    """The tag to resume from: `latest` if it verifies, else (with `fallback`) the newest
    older complete tag that does (every complete tag when `latest` is empty or garbage:
    checkpoint.tags.candidate_tags). None when the directory holds no checkpoint."""
    candidates = candidate_tags(checkpoint_dir)
    named = _latest_text(checkpoint_dir)
    skipped: list[str] = []
    if named is not None and named not in candidates[:1]:  # empty, garbage or dangling
        skipped.append(f"{checkpoint_dir / LATEST} names {named!r}, which is not a complete "
                       "modtrain checkpoint")
        if not fallback or not candidates:
            raise ModtrainError(f"{skipped[0]}; restore it, or "
                                + ("resume from the newest complete checkpoint with "
                                   "run.resume_fallback=true" if candidates else
                                   "start afresh in a new run.dir"))
    if not candidates:
        log(f"--resume auto: no checkpoint in {checkpoint_dir} yet; starting from step 0")
        return None
    for tag in candidates:
        why = _why_not(checkpoint_dir, tag, log)
        if why is None:
            if skipped:
                log(f"resuming from {tag}, the newest checkpoint that verifies: "
                    + "; ".join(skipped))
            return tag
        if not fallback:
            raise ModtrainError(
                f"{why}; run.resume_fallback=false: restore the file, or resume from the "
                "newest checkpoint that verifies with run.resume_fallback=true"
            )
        skipped.append(why)
    raise ModtrainError(
        f"no checkpoint in {checkpoint_dir} can be resumed from: {'; '.join(skipped)}; "
        "restore the files, or start afresh in a new run.dir"
    )


def plan_resume(checkpoint_dir: Path, layout: CheckpointLayout,
                log: Callable[[str], None] = lambda _: None,
                fallback: bool = True) -> ResumePlan | None:
    """None when there is nothing to resume; raises on a layout that cannot be loaded or
    when no checkpoint verifies. Collective when distributed (the ranks check the files
    together; rank 0 converts when the layout changed, the others wait)."""
    tag = choose_tag(checkpoint_dir, fallback, log)
    if tag is None:
        return None
    saved_state = read_state(checkpoint_dir, tag)
    saved = saved_state.saved_layout(str(checkpoint_dir / tag))
    universal = needs_universal(saved, layout)
    if universal and saved_state.model.get("moe", {}).get("enabled"):
        raise ModtrainError(
            f"checkpoint {tag} of an expert model (model.moe) was saved with {_describe(saved)} "
            f"and this run has {_describe(layout)}: expert checkpoints resume only on the "
            "layout they were saved with (DeepSpeed's universal checkpoints do not hold "
            "experts); relaunch with the saved layout")
    if universal and min(saved.zero_stage, layout.zero_stage) == 0:
        # DeepSpeed writes and loads universal checkpoints through its ZeRO optimizer only.
        stage = "saved with" if saved.zero_stage == 0 else "resumed with"
        raise ModtrainError(
            f"{checkpoint_dir / tag} ({_describe(saved)}) cannot be loaded by this run "
            f"({_describe(layout)}): a layout change goes through a universal checkpoint, "
            f"which needs ZeRO, and this checkpoint is {stage} train.zero_stage=0; "
            + ("resume on the saved layout" if saved.zero_stage == 0
               else "resume with train.zero_stage=1")
        )
    if universal and (saved.zero_stage == 3) != (layout.zero_stage == 3):
        # ZeRO-3 universal checkpoints carry per-rank model files that ZeRO 1/2 engines do
        # not read, and the other way round (DeepSpeed fails deep inside its loader).
        raise ModtrainError(
            f"{checkpoint_dir / tag} ({_describe(saved)}) cannot be loaded by this run "
            f"({_describe(layout)}): DeepSpeed's universal checkpoints do not cross between "
            f"ZeRO-3 and ZeRO-1/2; resume with train.zero_stage={saved.zero_stage}"
        )
    if saved.zero_stage != layout.zero_stage and not universal:
        raise ModtrainError(
            f"{checkpoint_dir / tag} was written with train.zero_stage={saved.zero_stage}; "
            f"resume with train.zero_stage={saved.zero_stage}"
        )
    same = saved == layout
    step = step_of(tag)
    if universal:
        pipeline = layout.pipeline > 1
        if not (checkpoint_dir / universal_tag(tag, pipeline)).is_dir():
            log(f"layout changed ({_describe(saved)} -> {_describe(layout)}): converting {tag} "
                "to a universal checkpoint on rank 0; for a large model convert before "
                f"launching: modtrain checkpoint universal {checkpoint_dir} --tag {tag} "
                f"--pipeline {layout.pipeline}")
        tag = convert_in_job(checkpoint_dir, tag, pipeline, layout.pipeline, log)
    return ResumePlan(tag=tag, step=step, same_layout=same, universal=universal)
