"""One optimizer step and one evaluation, for the plain DeepSpeed engine and the pipeline engine.

Both agree across ranks on two flags once per step (one all-reduce): a non-finite loss
anywhere (the update is skipped everywhere) and a stop signal anywhere (everyone saves).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from modtrain.data.read.dataset import ValidationSequences
from modtrain.progress_bar import bar
from modtrain.train.grad_clip import GradientClipper


@dataclass
class StepOutcome:
    loss: float  # language-model loss, mean over the step's micro-batches (this rank)
    skipped: bool  # a non-finite loss on some rank: no update anywhere
    stop: bool  # a stop signal on some rank
    stats: dict[str, float] = field(default_factory=dict)  # routing metrics, summed aux
    grad_norm: torch.Tensor | None = None  # before clipping, where modtrain clips (0-d)


def _to_device(batch: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(batch).to(device)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _agree(bad: bool, stop: bool) -> tuple[bool, bool]:
    if dist.get_world_size() == 1:  # nothing to agree on, and no collective to wait for
        return bad, stop
    flags = torch.tensor([float(bad), float(stop)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def _step_means(lm: list[torch.Tensor], total: list[torch.Tensor],
                stats: list[dict[str, torch.Tensor]]) -> tuple[bool, dict[str, float]]:
    """(every loss finite, means over micro-batches of loss, total_loss and the statistics),
    read from the device in one transfer: one host sync per step, not one per value."""
    keys = sorted(set().union(*stats))  # a statistic missing from a micro-batch counts 0
    rows = [torch.stack(lm), torch.stack(total)] + [
        torch.stack([torch.as_tensor(s.get(k, 0.0)).detach().to(lm[0]) for s in stats])
        for k in keys]
    table = torch.stack(rows).double()  # [values, micro-batches]
    finite = torch.isfinite(table[1]).all().double().unsqueeze(0)
    flat = torch.cat([finite, table.mean(dim=1)]).tolist()
    return bool(flat[0]), dict(zip(["loss", "total_loss", *keys], flat[1:]))


class EngineStep:
    """Gradient accumulation by hand over DeepSpeed's engine (data and tensor parallel)."""

    def __init__(self, engine, optimizer, clipper: GradientClipper | None = None) -> None:
        self.engine = engine
        self.optimizer = optimizer  # GuardedAdamW: the skip switch
        self.clipper = clipper  # None: DeepSpeed clips (or nothing is clipped)

    def train(self, micro_batches: list[np.ndarray], stop_requested: bool) -> StepOutcome:
        lm, total, stats = [], [], []  # per micro-batch, detached, still on the device
        grad_norm = None
        last = len(micro_batches) - 1
        for i, batch in enumerate(micro_batches):
            x, y = _to_device(batch, self.engine.device)
            out = self.engine(x, y)
            lm.append(out.lm_loss.detach())
            total.append(out.loss.detach())
            stats.append(out.stats)
            if i == last:  # decide before the update happens
                finite, means = _step_means(lm, total, stats)
                skip, stop = _agree(not finite, stop_requested)
                self.optimizer.skip_next = skip
            self.engine.backward(out.loss)
            if i == last and self.clipper is not None:  # gradients complete and reduced
                grad_norm = self.clipper.clip_()
            self.engine.step()
        self.optimizer.skip_next = False
        loss = means.pop("loss")
        return StepOutcome(loss, skip, stop, means, grad_norm)

    @torch.no_grad()
    def evaluate(self, val: ValidationSequences, indices: list[int], micro_batch: int,
                 show_progress: bool = False):
        """(sum of per-sample mean losses, count) over this rank's validation windows."""
        self.engine.eval()
        total, count = 0.0, 0
        for i in bar(range(0, len(indices), micro_batch), desc="eval", enabled=show_progress):
            batch = np.stack([val[j] for j in indices[i : i + micro_batch]])
            x, y = _to_device(batch, self.engine.device)
            total += float(self.engine(x, y).lm_loss) * len(batch)
            count += len(batch)
        self.engine.train()
        return total, count


class PipelineStep:
    """DeepSpeed's pipeline schedule (1F1B) runs the micro-batches of a step itself."""

    def __init__(self, engine, optimizer, blocks, routed_keys: list[str], pipeline_group) -> None:
        self.engine = engine
        self.optimizer = optimizer
        self.blocks = blocks  # this stage's BlockLayers
        self.routed_keys = routed_keys  # every routed statistic of the whole model
        self.pipeline_group = pipeline_group  # the stages that hold this rank's model

    def _iterator(self, micro_batches: list[np.ndarray]):
        return iter([_to_device(b, self.engine.device) for b in micro_batches])

    def _stage_stats(self) -> dict[str, float]:
        """Routing metrics of all stages (each stage fills its own, summed over stages)."""
        local: dict[str, float] = {}
        for block in self.blocks:
            local.update(block.pop_stats())
        if not self.routed_keys:
            return {}
        vec = torch.tensor([local.get(k, 0.0) for k in self.routed_keys], dtype=torch.float64)
        dist.all_reduce(vec, group=self.pipeline_group)
        return dict(zip(self.routed_keys, vec.tolist()))

    def train(self, micro_batches: list[np.ndarray], stop_requested: bool) -> StepOutcome:
        loss = float(self.engine.train_batch(data_iter=self._iterator(micro_batches)))
        # The update already happened; DeepSpeed skips it itself when the gradient norm is
        # not finite (ZeRO 0/1 with clipping), which a non-finite loss always causes.
        skip, stop = _agree(not np.isfinite(loss), stop_requested)
        return StepOutcome(loss, skip, stop, self._stage_stats())

    @torch.no_grad()
    def evaluate(self, val: ValidationSequences, indices: list[int], micro_batch: int,
                 show_progress: bool = False):
        total, count = 0.0, 0
        for i in bar(range(0, len(indices) - micro_batch + 1, micro_batch), desc="eval",
                     enabled=show_progress):
            batch = np.stack([val[j] for j in indices[i : i + micro_batch]])
            loss = self.engine.eval_batch(self._iterator([batch]), num_micro_batches=1)
            total += float(loss) * len(batch)
            count += len(batch)
        for block in self.blocks:
            block.pop_stats()
        return total, count
