"""One optimizer step and one evaluation, for the plain DeepSpeed engine and the pipeline engine.

Both agree across ranks once per step, in one all-reduce and one host read: a non-finite
loss anywhere (the update is skipped everywhere), a stop signal anywhere (everyone saves),
and the means of the loss and the routing statistics over data-parallel ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np
import torch

from modtrain.data.read.dataset import ValidationSequences, ValidationSet
from modtrain.model.documents import Documents
from modtrain.model.pipeline_layers import AuxGradScale
from modtrain.parallel.collectives import summarize_step
from modtrain.progress_bar import bar
from modtrain.train.grad_clip import GradientClipper
from modtrain.train.spikes import Spike, SpikeDetector

Validation = ValidationSequences | ValidationSet  # one store's windows, or a blend's


@dataclass
class StepOutcome:
    loss: float  # language-model loss, mean over the step's micro-batches (this rank)
    skipped: bool  # a non-finite loss on some rank: no update anywhere
    stop: bool  # a stop signal on some rank
    stats: dict[str, float] = field(default_factory=dict)  # routing metrics, summed aux
    grad_norm: torch.Tensor | None = None  # before clipping, where modtrain clips (0-d)
    applied: bool = True  # the optimizer updated the weights (no skip, no overflow)
    spike: Spike | None = None  # the update was skipped as a loss / gradient-norm spike


Batch: TypeAlias = np.ndarray | torch.Tensor  # [micro, seq_length + 1] token ids on the host


def _to_device(batch: Batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) on the device. non_blocking: from pinned rows (train/prefetch.py) the
    copy overlaps the step, and torch keeps the pinned block until it is done; from pageable
    memory CUDA stages the rows before returning; on the CPU it is no copy at all."""
    tokens = torch.as_tensor(batch).to(device, non_blocking=True)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


Values = dict[str, torch.Tensor]
# The rows' documents from their input tokens on the device (model/documents.py), or None.
DocumentSplit = Callable[[torch.Tensor], Documents]


def _step_values(lm: list[torch.Tensor], total: list[torch.Tensor],
                 stats: list[Values]) -> tuple[torch.Tensor, Values]:
    """(non-finite flag, means over micro-batches of loss, total_loss and the statistics),
    all 0-d tensors still on the device: nothing is read here."""
    keys = sorted(set().union(*stats))  # a statistic missing from a micro-batch counts 0
    rows = [torch.stack(lm), torch.stack(total)] + [
        torch.stack([torch.as_tensor(s.get(k, 0.0)).detach().to(lm[0]) for s in stats])
        for k in keys]
    table = torch.stack(rows).double()  # [values, micro-batches]
    nonfinite = (~torch.isfinite(table[1]).all()).double()
    return nonfinite, dict(zip(["loss", "total_loss", *keys], table.mean(dim=1).unbind()))


class StepRunner(Protocol):
    """What the training loop needs of a layout's step: `EngineStep` or `PipelineStep`."""

    def train(self, micro_batches: Sequence[Batch], stop_requested: bool) -> StepOutcome: ...

    def evaluate(self, val: Validation, indices: list[int], micro_batch: int,
                 show_progress: bool = False) -> tuple[torch.Tensor, int]: ...


def _applied(engine: Any) -> bool:
    """Whether DeepSpeed applied the last update (False after a gradient overflow it
    skipped: fp16 loss scaling, or a non-finite norm where DeepSpeed clips)."""
    was_applied = getattr(engine, "was_step_applied", None)
    return bool(was_applied()) if was_applied is not None else True


class EngineStep:
    """Gradient accumulation by hand over DeepSpeed's engine (data and tensor parallel)."""

    def __init__(self, engine: Any, optimizer: Any, clipper: GradientClipper | None = None,
                 spikes: SpikeDetector | None = None,
                 documents: DocumentSplit | None = None) -> None:
        self.engine = engine
        self.optimizer = optimizer  # GuardedAdamW: the skip switch
        self.clipper = clipper  # None: DeepSpeed clips (or nothing is clipped)
        self.spikes = spikes  # None: no spike skipping (train.spike_window=0)
        self.documents = documents  # None: attention and positions over the whole row

    def _forward(self, batch: Batch) -> Any:
        x, y = _to_device(batch, self.engine.device)
        if self.documents is None:
            return self.engine(x, y)
        return self.engine(x, y, documents=self.documents(x))

    def train(self, micro_batches: Sequence[Batch], stop_requested: bool) -> StepOutcome:
        lm, total, stats = [], [], []  # per micro-batch, detached, still on the device
        grad_norm = None
        last = len(micro_batches) - 1
        device = self.engine.device
        for i, batch in enumerate(micro_batches):
            out = self._forward(batch)
            lm.append(out.lm_loss.detach())
            total.append(out.loss.detach())
            stats.append(out.stats)
            self.engine.backward(out.loss)
            if i < last:
                self.engine.step()  # an accumulation step: DeepSpeed only counts it
                continue
            if self.clipper is not None:  # gradients complete and reduced
                grad_norm = self.clipper.clip_()
            # Decided after the last backward is queued, before the update: the one read of
            # the step (flags and means for every rank together).
            nonfinite, values = _step_values(lm, total, stats)
            if grad_norm is not None:
                values["grad_norm"] = grad_norm  # the same on every rank: its own mean
            summary = summarize_step([nonfinite, bool(stop_requested)], values, device)
            spike = (self.spikes.judge(summary.means)
                     if self.spikes is not None and not summary.any_nonfinite else None)
            self.optimizer.skip_next = summary.any_nonfinite or spike is not None
            self.engine.step()
        self.optimizer.skip_next = False
        means = dict(summary.means)
        loss = means.pop("loss")
        norm = means.pop("grad_norm", None)
        applied = _applied(self.engine) and not summary.any_nonfinite and spike is None
        if applied and self.spikes is not None:
            self.spikes.accept(summary.means)
        return StepOutcome(loss, summary.any_nonfinite, summary.any_stop, means,
                           None if norm is None else torch.tensor(norm), applied, spike)

    @torch.no_grad()
    def evaluate(self, val: Validation, indices: list[int], micro_batch: int,
                 show_progress: bool = False) -> tuple[torch.Tensor, int]:
        """(sum of per-sample mean losses, on the device; count) over `indices`."""
        self.engine.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=self.engine.device), 0
        for i in bar(range(0, len(indices), micro_batch), desc="eval", enabled=show_progress):
            batch = np.stack([val[j] for j in indices[i : i + micro_batch]])
            total += self._forward(batch).lm_loss.detach().double() * len(batch)
            count += len(batch)
        self.engine.train()
        return total, count


def aux_grad_scale(engine: Any) -> float:
    """d(what the pipeline engine differentiates) / d(an aux loss): DeepSpeed divides the LM
    loss by the accumulation steps and, under fp16, multiplies it by the current dynamic
    loss scale before its backward, then unscales every gradient; an aux-loss gradient
    injected without the same factor would come out 1 / loss scale (about 2^-16) too small.
    """
    scale = getattr(engine.optimizer, "loss_scale", None) if engine.fp16_enabled() else None
    return float(scale if scale is not None else 1.0) / engine.gradient_accumulation_steps()


class PipelineStep:
    """DeepSpeed's pipeline schedule (1F1B) runs the micro-batches of a step itself."""

    def __init__(self, engine: Any, optimizer: Any, blocks: list[Any], routed_keys: list[str],
                 pipeline: int, aux_scale: AuxGradScale | None = None) -> None:
        self.engine = engine
        self.optimizer = optimizer
        self.blocks = blocks  # this stage's BlockLayers
        self.routed_keys = routed_keys  # every routed statistic of the whole model
        self.pipeline = pipeline
        self.aux_scale = aux_scale or AuxGradScale()  # the one the stage's blocks read

    def _iterator(self, micro_batches: Sequence[Batch]):
        return iter([_to_device(b, self.engine.device) for b in micro_batches])

    def _stage_stats(self) -> dict[str, torch.Tensor]:
        """This stage's routing metrics, the other stages' keys as zeros (a world sum then
        adds each stage's own)."""
        local: dict[str, torch.Tensor] = {}
        for block in self.blocks:
            local.update(block.pop_stats())
        zero = torch.zeros((), dtype=torch.float64, device=self.engine.device)
        return {k: local.get(k, zero) for k in self.routed_keys}

    def train(self, micro_batches: Sequence[Batch], stop_requested: bool) -> StepOutcome:
        # The loss scale changes only in the optimizer step, after every micro-batch's backward.
        self.aux_scale.value = aux_grad_scale(self.engine)
        loss = self.engine.train_batch(data_iter=self._iterator(micro_batches))
        loss = torch.as_tensor(loss, device=self.engine.device).detach().double().reshape(())
        # The update already happened; DeepSpeed skips it itself when the gradient norm is
        # not finite (ZeRO 0/1 with clipping), which a non-finite loss always causes.
        # Each statistic lives on one stage out of `pipeline`; the loss on every stage
        # (DeepSpeed broadcasts it), so it enters the world sum once per stage.
        values = {**self._stage_stats(), "loss": loss / self.pipeline}
        summary = summarize_step([~torch.isfinite(loss), bool(stop_requested)], values,
                                 self.engine.device, share=self.pipeline)
        means = dict(summary.means)
        return StepOutcome(means.pop("loss"), summary.any_nonfinite, summary.any_stop, means,
                           applied=_applied(self.engine) and not summary.any_nonfinite)

    @torch.no_grad()
    def evaluate(self, val: Validation, indices: list[int], micro_batch: int,
                 show_progress: bool = False) -> tuple[torch.Tensor, int]:
        total, count = torch.zeros((), dtype=torch.float64, device=self.engine.device), 0
        for i in bar(range(0, len(indices) - micro_batch + 1, micro_batch), desc="eval",
                     enabled=show_progress):
            batch = np.stack([val[j] for j in indices[i : i + micro_batch]])
            loss = self.engine.eval_batch(self._iterator([batch]), num_micro_batches=1)
            # A one-element tensor ([1] from eval_batch), or a float.
            total += torch.as_tensor(loss, device=total.device).double().reshape(()) * len(batch)
            count += len(batch)
        for block in self.blocks:
            block.pop_stats()
        return total, count
