"""The training loop: DeepSpeed engine around the megatron-core GPT, one process or many."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modtrain.config import Config, config_to_dict, save_config
from modtrain.data.read.dataset import ValidationSequences
from modtrain.data.read.loading import build_training_data
from modtrain.errors import ModtrainError
from modtrain.model.flops import training_flops_per_token
from modtrain.parallel import init_distributed
from modtrain.run_dir import CHECKPOINTS, CONFIG_FILE, METRICS_FILE
from modtrain.train import checkpoint
from modtrain.train.compile import check_compile, compile_blocks
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.engine import build_engine
from modtrain.train.inputs import check_inputs
from modtrain.train.metrics import Progress
from modtrain.train.optim import restore_group_settings, untie_step_counters
from modtrain.train.resume import current_layout, plan_resume
from modtrain.train.run_guard import check_run_dir, move_aside, previous_run
from modtrain.train.signals import RequeueRequested, StopFlag
from modtrain.train.sinks import MetricSink, build_sinks
from modtrain.train.throughput import device_peak_tflops, throughput_record


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_loss: float
    tokens_per_s: float
    run_dir: Path


def _dp_mean(values: dict[str, float], group) -> dict[str, float]:
    if not values:
        return {}
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t, group=group)
    t /= torch.distributed.get_world_size(group)
    return dict(zip(keys, t.tolist()))


def evaluate(stepper, val: ValidationSequences, micro_batch: int, dp_rank: int, dp_size: int,
             group, show_progress: bool = False) -> float:
    """Mean LM loss over the validation windows, split across data-parallel ranks."""
    total, count = stepper.evaluate(val, list(range(dp_rank, len(val), dp_size)), micro_batch,
                                    show_progress)
    sums = torch.tensor([total, count], dtype=torch.float64)
    torch.distributed.all_reduce(sums, group=group)
    return float(sums[0] / sums[1])


def train(config: Config, overwrite: bool = False) -> TrainResult:
    """Train to config.train.steps. Raises RequeueRequested after a signal-triggered save.

    An earlier run in config.run.dir is continued (run.resume=auto), moved aside
    (`overwrite`), or refused."""
    store = check_inputs(config)
    check_compile(config)
    run_dir = Path(config.run.dir)
    check_run_dir(run_dir, config.run.resume, overwrite)  # every rank, before any waits
    topo = init_distributed(config.parallel.tensor, config.parallel.pipeline)

    t = config.train
    is_main = topo.rank == 0
    progress = Progress(t.steps, enabled=is_main)
    ckpt_dir = run_dir / CHECKPOINTS
    if is_main:
        if overwrite and previous_run(run_dir):
            progress.message(f"moved the earlier run aside to {move_aside(run_dir)}")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / CONFIG_FILE)
    torch.distributed.barrier()

    layout = current_layout(topo.tensor, topo.pipeline, topo.data, t.zero_stage)
    plan = (plan_resume(ckpt_dir, layout, log=progress.message,
                        fallback=config.run.resume_fallback)
            if config.run.resume == "auto" else None)
    ds_config = deepspeed_config(config, topo.data)
    micro_batch = t.micro_batch(topo.data)
    if plan is not None and plan.universal:
        ds_config["checkpoint"] = {"load_universal": True}

    torch.manual_seed(config.run.seed)
    engine, optimizer, stepper = build_engine(config, topo, ds_config, progress.message)
    if t.compile:
        progress.message(f"train.compile: {compile_blocks(engine.module)} blocks compiled "
                         "(the first steps include compilation)")

    dp_rank, dp_group = topo.data_rank, topo.groups.data
    loader, val = build_training_data(config, store, dp_rank, topo.data,
                                      log=progress.message if is_main else lambda _: None)

    start_step = 0
    if plan is not None:
        state = checkpoint.load(engine, ckpt_dir, plan.tag, plan.same_layout)
        start_step = int(state["step"])
        loader.load_state_dict(state["data"])
        restore_group_settings(optimizer, t, start_step)
        untie_step_counters(optimizer)
        how = "" if plan.same_layout else " (layout changed: " + (
            "universal checkpoint)" if plan.universal else "no RNG restore)")
        progress.message(f"resumed from step {start_step}{how}")
    sinks: list[MetricSink] = build_sinks(
        run_dir, METRICS_FILE, config.run.tensorboard, start_step, progress,
        config.run.wandb_project if config.run.wandb else None, config_to_dict(config),
    ) if is_main else []

    def log(record: dict[str, Any]) -> None:
        for sink in sinks:
            sink.log(record)

    def save(step: int) -> str:
        state = {"step": step, "data": loader.state_dict(), "config": config_to_dict(config),
                 "layout": layout}
        tag = checkpoint.save(engine, ckpt_dir, step, state, t.keep_last, t.keep_every)
        progress.message(f"saved checkpoint {ckpt_dir / tag}")
        return tag

    stop = StopFlag().install()
    tokens_per_step = t.global_batch_size * config.data.seq_length
    flops_per_token = training_flops_per_token(config.model, config.data.seq_length)
    peak = device_peak_tflops(t.peak_tflops, topo.device)
    val_loss, last = float("nan"), {}
    window_tokens, window_start = 0, time.perf_counter()
    bad_steps: list[int] = []
    try:
        for step in range(start_step + 1, t.steps + 1):
            lr = engine.get_lr()[0]  # the rate this step's update uses
            micro_batches = loader.next_step()
            outcome = stepper.train(micro_batches, stop.requested)
            skip, stop_now = outcome.skipped, outcome.stop
            window_tokens += tokens_per_step
            bad_steps = bad_steps + [step] if skip else []
            if skip:
                progress.message(f"step {step}: non-finite loss, update skipped on all ranks")
            if step % t.log_interval == 0 or step == t.steps or skip:
                now = time.perf_counter()
                tokens_per_s = window_tokens / (now - window_start)
                window_tokens, window_start = 0, now
                means = _dp_mean({"loss": outcome.loss, **outcome.stats}, dp_group)
                grad_norm = (outcome.grad_norm if outcome.grad_norm is not None
                             else engine.get_global_grad_norm())
                record: dict[str, Any] = {
                    "step": step,
                    "loss": means.pop("loss"),
                    "lr": lr,
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "tokens_per_s": tokens_per_s,
                    "tokens": step * tokens_per_step,
                    **throughput_record(tokens_per_s, flops_per_token, topo.world_size, peak),
                    **means,
                }
                if skip:
                    record["skipped"] = True
                log(record)
                last = record
            if len(bad_steps) >= t.max_nonfinite_steps:
                tag = save(step)
                raise ModtrainError(
                    f"training stopped: non-finite loss on {len(bad_steps)} consecutive steps "
                    f"({bad_steps[0]}-{bad_steps[-1]}), all skipped; {ckpt_dir / tag} holds the "
                    f"weights of step {bad_steps[0] - 1}; lower train.lr or check the data, then "
                    "resume with --resume auto"
                )
            if stop_now:
                tag = save(step)
                raise RequeueRequested(step, str(ckpt_dir / tag))
            if step % t.eval_interval == 0 or step == t.steps:
                val_loss = evaluate(stepper, val, micro_batch, dp_rank, topo.data, dp_group,
                                    show_progress=is_main)
                log({"step": step, "val_loss": val_loss})
            if step % t.save_interval == 0 or step == t.steps:
                save(step)
            if step % t.eval_interval == 0 or step % t.save_interval == 0:
                # Evaluation and saving are not training throughput.
                window_tokens, window_start = 0, time.perf_counter()
    finally:
        stop.restore()
        for sink in sinks:
            sink.close()
    return TrainResult(
        steps=t.steps,
        final_loss=float(last.get("loss", float("nan"))),
        val_loss=val_loss,
        tokens_per_s=float(last.get("tokens_per_s", float("nan"))),
        run_dir=run_dir,
    )
