"""The concerns that hang off the training loop, one class each, called at named points.

A new behaviour (a profiler window, a routing map at each evaluation) is a new `Hook`
(train/hook_base.py: the points) and one line in `default_hooks`. The loop
(train/trainer.py) calls `after_step` on each hook in order; hooks that act (evaluate,
save) tell the others through `Run.emit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from modtrain.checkpoint.engine import save_load
from modtrain.checkpoint.format import CheckpointState
from modtrain.checkpoint.tags import latest_tag
from modtrain.data.read.dataset import ValidationSet
from modtrain.errors import ModtrainError
from modtrain.parallel import collectives
from modtrain.train.hook_base import Hook, StepEnd
from modtrain.train.routing_watch import routing_watch
from modtrain.train.signals import RequeueRequested
from modtrain.train.state import Run
from modtrain.train.throughput import throughput_record


def due(step: int, interval: int, last: int) -> bool:
    return step % interval == 0 or step == last


class Metrics(Hook):
    """Throughput over the window since the last record, and one record per logged step
    (and per step the optimizer did not apply). Evaluation and saving are not throughput."""

    def __init__(self, run: Run) -> None:
        t = run.config.train
        self.tokens_per_step = t.global_batch_size * run.config.data.seq_length
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.last: dict[str, Any] = {}

    def after_step(self, run: Run, end: StepEnd) -> None:
        self.window_tokens += self.tokens_per_step
        t, outcome = run.config.train, end.outcome
        if not (due(end.step, t.log_interval, t.steps) or not outcome.applied):
            return
        now = time.perf_counter()
        tokens_per_s = self.window_tokens / (now - self.window_start)
        self._restart_window()
        grad_norm = (outcome.grad_norm if outcome.grad_norm is not None
                     else run.engine.get_global_grad_norm())
        record: dict[str, Any] = {
            "step": end.step,
            "loss": outcome.loss,
            "lr": end.lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tokens_per_s,
            "tokens": end.step * self.tokens_per_step,
            **throughput_record(tokens_per_s, run.flops_per_token, run.topo.world_size,
                                run.peak_tflops),
            **outcome.stats,
        }
        if run.topo.device.type == "cuda":  # the allocator's counter: no device sync
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(run.topo.device) / 2**30
        if not outcome.applied:
            record["skipped"] = True
        if outcome.spike is not None:
            record["spike_zscore"] = outcome.spike.zscore
        run.log(record)
        self.last = record

    def _restart_window(self) -> None:
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def after_eval(self, run: Run, step: int, val_loss: float) -> None:
        self._restart_window()

    def after_save(self, run: Run, step: int, tag: str) -> None:
        self._restart_window()


class BadStepGuard(Hook):
    """Steps the optimizer did not apply: a non-finite loss (modtrain skips the update on
    every rank) or a gradient overflow (DeepSpeed skips it). `max_nonfinite_steps` in a row
    stop the run; while such a streak lasts, saves keep every earlier checkpoint."""

    def __init__(self) -> None:
        self.streak: list[int] = []
        self.only_loss = True  # every step of the streak had a non-finite loss

    def after_step(self, run: Run, end: StepEnd) -> None:
        outcome = end.outcome
        if outcome.spike is not None:  # skipped on purpose: the spike guard's concern
            return
        if outcome.applied:
            self.streak, self.only_loss = [], True
            return
        self.streak.append(end.step)
        self.only_loss &= outcome.skipped
        run.message(f"step {end.step}: " + (
            "non-finite loss, update skipped on all ranks" if outcome.skipped else
            "the optimizer skipped the update (non-finite gradients or fp16 overflow)"))
        if len(self.streak) < run.config.train.max_nonfinite_steps:
            return
        tag = run.save(end.step)
        first, last = self.streak[0], self.streak[-1]
        what = "non-finite loss" if self.only_loss else "no optimizer update"
        raise ModtrainError(
            f"training stopped: {what} on {len(self.streak)} consecutive steps "
            f"({first}-{last}), all skipped; {run.ckpt_dir / tag} holds the weights of step "
            f"{first - 1}; lower train.lr or check the data, then resume with --resume auto")

    @property
    def in_streak(self) -> bool:
        return bool(self.streak)


class SpikeGuard(Hook):
    """Reports each step skipped as a spike with the samples it held; `spike_max_skips`
    of them within `spike_window` steps stop the run, naming the last checkpoint."""

    def __init__(self) -> None:
        self.recent: list[int] = []

    def after_step(self, run: Run, end: StepEnd) -> None:
        spike, t = end.outcome.spike, run.config.train
        if spike is None:
            return
        position = run.loader.state_dict()
        last = int(position["consumed_samples"])
        run.message(
            f"step {end.step}: {spike.key} {spike.value:.4g} is {spike.zscore:.1f} standard "
            f"deviations above the last {t.spike_window} steps; update skipped on all ranks "
            f"(samples {last - t.global_batch_size}-{last - 1}, epoch {position['epoch']})")
        self.recent = [s for s in self.recent if s > end.step - t.spike_window] + [end.step]
        if len(self.recent) >= t.spike_max_skips:
            tag = latest_tag(run.ckpt_dir)
            good = f"{run.ckpt_dir / tag} is the last checkpoint" if tag else "no checkpoint yet"
            raise ModtrainError(
                f"training stopped: {len(self.recent)} loss spikes within {t.spike_window} "
                f"steps (steps {', '.join(map(str, self.recent))}), all skipped; {good}; "
                "check the data at those samples or lower train.lr, then resume with "
                "--resume auto")


class Requeue(Hook):
    """A stop signal on any rank (agreed in the step): save, then leave for a requeue."""

    def after_step(self, run: Run, end: StepEnd) -> None:
        if end.outcome.stop:
            tag = run.save(end.step)
            raise RequeueRequested(end.step, str(run.ckpt_dir / tag))


class Evaluation(Hook):
    """Validation loss every `eval_interval` steps and at the last step; with several data
    sources, each one's too (val_loss/SOURCE)."""

    def __init__(self) -> None:
        self.val_loss = float("nan")

    def after_step(self, run: Run, end: StepEnd) -> None:
        t = run.config.train
        if due(end.step, t.eval_interval, t.steps):
            self.val_loss, per_source = evaluate(run)
            run.log({"step": end.step, "val_loss": self.val_loss,
                     **{f"val_loss/{name}": v for name, v in per_source.items()}})
            run.emit("after_eval", end.step, self.val_loss)


def evaluation_windows(n: int, dp_rank: int, dp_size: int, equal: bool) -> list[int]:
    """This rank's validation windows. `equal`: every rank gets as many (and so the same
    micro-batch shapes): expert layers size their capacity from the tokens of a batch, and
    unequal batches across an expert-parallel group would mismatch its all-to-alls."""
    if equal:
        n -= n % dp_size
    return list(range(dp_rank, n, dp_size))


def evaluate(run: Run) -> tuple[float, dict[str, float]]:
    """Mean LM loss over the validation windows, and over each source's windows where the
    data blend several (else {}); every source's windows split across data-parallel ranks,
    each micro-batch from one source. One all-reduce for all the sums."""
    topo = run.topo
    equal = bool(run.config.model.moe_layer_ids) and topo.data_size > 1
    sources = (run.val.sources() if isinstance(run.val, ValidationSet)
               and len(run.val.parts) > 1 else [("", range(len(run.val)))])
    totals, counts = [], []
    for _, span in sources:
        indices = [span.start + i
                   for i in evaluation_windows(len(span), topo.data_rank, topo.data_size, equal)]
        total, count = run.stepper.evaluate(run.val, indices, run.micro_batch,
                                            show_progress=run.is_main)
        totals.append(total)
        counts.append(count)
    losses = collectives.ratios_of_sums(torch.stack([*totals, sum(totals)]),
                                        [*counts, sum(counts)], topo.process_groups.data,
                                        topo.device)
    per_source = {name: v for (name, _), v in zip(sources, losses)} if len(sources) > 1 else {}
    return losses[-1], per_source


class Checkpointing(Hook):
    """Saves every `save_interval` steps and at the last step; `save` for the other hooks."""

    def __init__(self, guard: BadStepGuard) -> None:
        self.guard = guard

    def after_step(self, run: Run, end: StepEnd) -> None:
        t = run.config.train
        if due(end.step, t.save_interval, t.steps):
            run.save(end.step)

    def save(self, run: Run, step: int) -> str:
        run.emit("before_save", step)
        t = run.config.train
        state = CheckpointState(step=step, data=run.loader.state_dict(),
                                config=run.config_dict, layout=run.layout)
        # During a streak of skipped updates the weights may be ruined: prune nothing, so
        # the last good checkpoints stay.
        keep_last, keep_every = (0, 0) if self.guard.in_streak else (t.keep_last, t.keep_every)
        tag = save_load.save(run.engine, run.ckpt_dir, state, keep_last, keep_every)
        run.message(f"saved checkpoint {run.ckpt_dir / tag}")
        run.emit("after_save", step, tag)
        return tag


class Sinks(Hook):
    """Closes the metric sinks when the loop ends, however it ends."""

    def on_stop(self, run: Run) -> None:
        for sink in run.sinks:
            sink.close()


@dataclass
class LoopHooks:
    """The loop's hooks in the order they act after each step, and the ones it reads."""

    metrics: Metrics
    guard: BadStepGuard
    evaluation: Evaluation
    saving: Checkpointing

    extra: list[Hook] = field(default_factory=list)  # appended after the built-in ones
    ordered_once: list[Hook] = field(init=False)

    def __post_init__(self) -> None:
        # The step's record first, then what may end the run, then evaluation and saving.
        self.ordered_once = [self.metrics, self.guard, SpikeGuard(), Requeue(),
                             self.evaluation, self.saving, *self.extra, Sinks()]


def default_hooks(run: Run) -> LoopHooks:
    guard = BadStepGuard()
    return LoopHooks(Metrics(run), guard, Evaluation(), Checkpointing(guard),
                     extra=[*routing_watch(run)])
