"""The training loop: set-up that returns a typed `Run`, then a short loop of hooks.

Set-up (`set_up`) resolves the layout, resumes, builds the engine, the data and the sinks;
the loop (`train`) runs steps and hands each to the hooks of train/hooks.py (metrics, the
bad-step guard, requeue on signal, evaluation, checkpointing), which hold every concern.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modtrain.checkpoint.engine import save_load
from modtrain.checkpoint.engine.resume import ResumePlan, context_notes, current_layout, plan_resume
from modtrain.config import Config, config_to_dict, save_config
from modtrain.data.read.dataset import BatchLoader
from modtrain.data.read.loading import DataSources, build_training_data
from modtrain.model.flops import training_flops_per_token
from modtrain.parallel import collectives, init_distributed
from modtrain.run_dir import CHECKPOINTS, CONFIG_FILE, METRICS_FILE
from modtrain.train.branch import check_schedule, start_from
from modtrain.train.compile import check_compile, compile_blocks
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.engine import build_engine
from modtrain.train.fits import check_fits
from modtrain.train.hooks import Hook, StepEnd, default_hooks
from modtrain.train.inputs import check_inputs
from modtrain.train.metrics import Progress
from modtrain.train.optim import restore_group_settings, untie_step_counters
from modtrain.train.prefetch import PrefetchLoader
from modtrain.train.run_guard import check_run_dir, move_aside, previous_run
from modtrain.train.signals import StopFlag
from modtrain.train.sinks import build_sinks
from modtrain.train.state import Run
from modtrain.train.throughput import device_peak_tflops


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_loss: float
    tokens_per_s: float
    run_dir: Path


def preflight(config: Config, overwrite: bool) -> DataSources:
    """The checks of the user's files and the run directory, before DeepSpeed starts: run
    once per process (`modtrain train` runs them before the launcher is asked anything)."""
    sources = check_inputs(config)
    check_compile(config)
    check_run_dir(Path(config.run.dir), config.run.resume, overwrite)  # before any waits
    check_schedule(config)  # before run.init_from's checkpoint is linked into run.dir
    start_from(config)
    return sources


def _resume(run: Run, plan: ResumePlan, optimizer: Any) -> int:
    t = run.config.train
    state = save_load.load(run.engine, run.ckpt_dir, plan.tag, plan.same_layout)
    start_step = state.step
    for note in context_notes(state.model, run.config.model):
        run.message(f"modtrain: warning: {note}")
    run.loader.load_state_dict(state.data)
    restore_group_settings(optimizer, t, start_step)
    untie_step_counters(optimizer)
    how = "" if plan.same_layout else " (layout changed: " + (
        "universal checkpoint)" if plan.universal else "no RNG restore)")
    run.message(f"resumed from step {start_step}{how}")
    return start_step


def set_up(config: Config, overwrite: bool = False,
           sources: DataSources | None = None) -> Run:
    """Process groups, the run directory, the resume plan, the engine, the data, the sinks."""
    if sources is None:
        sources = preflight(config, overwrite)
    run_dir = Path(config.run.dir)
    topo = init_distributed(config.parallel.tensor, config.parallel.pipeline,
                            timeout_minutes=config.parallel.timeout_minutes)
    check_fits(config, topo)  # before anything is written
    t = config.train
    is_main = topo.rank == 0
    progress = Progress(t.steps, enabled=is_main)
    ckpt_dir = run_dir / CHECKPOINTS
    if is_main:
        if overwrite and previous_run(run_dir):
            progress.message(f"moved the earlier run aside to {move_aside(run_dir)}")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / CONFIG_FILE)
    collectives.barrier()

    layout = current_layout(topo.tensor_size, topo.pipeline_size, topo.data_size, t.zero_stage)
    plan = (plan_resume(ckpt_dir, layout, log=progress.message,
                        fallback=config.run.resume_fallback)
            if config.run.resume == "auto" else None)
    ds_config = deepspeed_config(config, topo.data_size, cuda=topo.device.type == "cuda")
    if plan is not None and plan.universal:
        ds_config["checkpoint"] = {"load_universal": True}

    torch.manual_seed(config.run.seed)
    engine, optimizer, stepper = build_engine(config, topo, ds_config, progress.message)
    if t.compile:
        progress.message(f"train.compile: {compile_blocks(engine.module)} blocks compiled "
                         "(the first steps include compilation)")
    batches, val = build_training_data(config, sources, topo.data_rank, topo.data_size,
                                       log=progress.message if is_main else lambda _: None)
    pin = topo.device if topo.device.type == "cuda" else None  # CPU: nothing to pin
    loader: BatchLoader | PrefetchLoader = (
        PrefetchLoader(batches, pin, end=t.steps * t.global_batch_size)
        if config.data.prefetch else batches)
    run = Run(config=config, topo=topo, engine=engine, stepper=stepper, loader=loader,
              val=val, progress=progress, sinks=[], ckpt_dir=ckpt_dir, layout=layout,
              start_step=0, micro_batch=t.micro_batch(topo.data_size),
              flops_per_token=training_flops_per_token(config.model, config.data.seq_length),
              peak_tflops=device_peak_tflops(t.peak_tflops, topo.device), stop=StopFlag(),
              config_dict=config_to_dict(config))
    if plan is not None:
        run.start_step = _resume(run, plan, optimizer)
    if is_main:
        run.sinks = build_sinks(
            run_dir, METRICS_FILE, config.run.tensorboard, run.start_step, progress,
            config.run.wandb_project if config.run.wandb else None, run.config_dict)
    return run


def train(config: Config, overwrite: bool = False,
          sources: DataSources | None = None) -> TrainResult:
    """Train to config.train.steps. Raises RequeueRequested after a signal-triggered save.

    An earlier run in config.run.dir is continued (run.resume=auto), moved aside
    (`overwrite`), or refused. `sources`: what `preflight` returned, if it already ran."""
    run = set_up(config, overwrite, sources)
    hooks = default_hooks(run)
    ordered: list[Hook] = hooks.ordered_once
    run.hooks, run.saver = ordered, hooks.saving.save
    run.stop.install()
    try:
        for step in range(run.start_step + 1, config.train.steps + 1):
            lr = run.engine.get_lr()[0]  # the rate this step's update uses
            outcome = run.stepper.train(run.loader.next_step(), run.stop.requested)
            end = StepEnd(step, lr, outcome)
            for hook in ordered:
                hook.after_step(run, end)
    finally:
        run.stop.restore()
        run.loader.close()
        for hook in ordered:
            hook.on_stop(run)
    last = hooks.metrics.last
    return TrainResult(
        steps=config.train.steps,
        final_loss=float(last.get("loss", float("nan"))),
        val_loss=hooks.evaluation.val_loss,
        tokens_per_s=float(last.get("tokens_per_s", float("nan"))),
        run_dir=Path(config.run.dir),
    )
