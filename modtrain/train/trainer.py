"""The training loop: DeepSpeed engine around the megatron-core GPT, one process or many."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modtrain.config import Config, config_to_dict, save_config
from modtrain.data.dataset import ValidationSequences
from modtrain.data.loading import build_training_data
from modtrain.errors import ModtrainError
from modtrain.model import GPT
from modtrain.parallel import MegatronMPU, init_distributed
from modtrain.train import checkpoint
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.inputs import check_inputs
from modtrain.train.metrics import MetricsWriter, Progress
from modtrain.train.optim import build_optimizer, build_scheduler, lr_at
from modtrain.train.resume import current_layout, plan_resume
from modtrain.train.signals import RequeueRequested, StopFlag


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_loss: float
    tokens_per_s: float
    run_dir: Path


def _to_device(batch: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(batch).to(device)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _dp_mean(values: dict[str, float], group) -> dict[str, float]:
    if not values:
        return {}
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t, group=group)
    t /= torch.distributed.get_world_size(group)
    return dict(zip(keys, t.tolist()))


def _finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite numbers are logged as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()}


@torch.no_grad()
def evaluate(engine, val: ValidationSequences, micro_batch: int, dp_rank: int, dp_size: int,
             group) -> float:
    """Mean LM loss over the validation windows, split across data-parallel ranks."""
    engine.eval()
    mine = list(range(dp_rank, len(val), dp_size))
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(0, len(mine), micro_batch):
        batch = np.stack([val[j] for j in mine[i : i + micro_batch]])
        x, y = _to_device(batch, engine.device)
        out = engine(x, y)
        total[0] += out.lm_loss.double().cpu() * len(batch)
        total[1] += len(batch)
    torch.distributed.all_reduce(total, group=group)
    engine.train()
    return float(total[0] / total[1])


def train(config: Config) -> TrainResult:
    """Train to config.train.steps. Raises RequeueRequested after a signal-triggered save."""
    store = check_inputs(config)
    if config.parallel.pipeline > 1:
        raise ModtrainError(
            "parallel.pipeline > 1 needs the pipeline engine, which this version does not "
            "have yet; use parallel.pipeline=1"
        )
    topo = init_distributed(config.parallel.tensor, config.parallel.pipeline)
    import deepspeed
    from megatron.core import parallel_state as ps

    t = config.train
    is_main = topo.rank == 0
    run_dir = Path(config.run.dir)
    ckpt_dir = run_dir / "checkpoints"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    torch.distributed.barrier()

    layout = current_layout(topo.tensor, topo.pipeline, topo.data, t.zero_stage)
    plan = plan_resume(ckpt_dir, layout) if config.run.resume == "auto" else None
    ds_config = deepspeed_config(config, topo.data)
    if plan is not None and plan.universal:
        ds_config["checkpoint"] = {"load_universal": True}

    torch.manual_seed(config.run.seed)
    model = GPT(config.model, seed=config.run.seed)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
        mpu=MegatronMPU(),
    )
    if t.zero_stage == 3 and config.model.tie_embeddings:
        # ZeRO-3 gathers a parameter only inside its own module's forward; the tied output
        # projection reads the embedding weight from another module.
        deepspeed.zero.register_external_parameter(model.output_layer, model.embedding.weight)

    dp_rank, dp_group = ps.get_data_parallel_rank(), ps.get_data_parallel_group()
    loader, val = build_training_data(config, store, dp_rank, topo.data)
    metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=is_main)
    progress = Progress(t.steps, enabled=is_main)

    start_step = 0
    if plan is not None:
        state = checkpoint.load(engine, ckpt_dir, plan.tag, plan.same_layout)
        start_step = int(state["step"])
        loader.load_state_dict(state["data"])
        # The restored learning rate was computed by the saved run's schedule; continue with
        # this config's (identical unless train.steps or train.lr changed).
        for group in optimizer.param_groups:
            group["lr"] = lr_at(start_step, t)
        how = "" if plan.same_layout else " (layout changed: " + (
            "universal checkpoint)" if plan.universal else "no RNG restore)")
        progress.message(f"resumed from step {start_step}{how}")

    def save(step: int) -> str:
        state = {"step": step, "data": loader.state_dict(), "config": config_to_dict(config),
                 "layout": layout}
        tag = checkpoint.save(engine, ckpt_dir, step, state, t.keep_last, t.keep_every)
        progress.message(f"saved checkpoint {ckpt_dir / tag}")
        return tag

    stop = StopFlag().install()
    tokens_per_step = t.global_batch_size * config.data.seq_length
    val_loss, last = float("nan"), {}
    window_tokens, window_start = 0, time.perf_counter()
    bad_steps: list[int] = []
    try:
        for step in range(start_step + 1, t.steps + 1):
            lr = engine.get_lr()[0]  # the rate this step's update uses
            sums: dict[str, float] = {}
            finite = True
            micro_batches = loader.next_step()
            for i, batch in enumerate(micro_batches):
                x, y = _to_device(batch, engine.device)
                out = engine(x, y)
                finite = finite and bool(torch.isfinite(out.loss.detach()).item())
                if i == len(micro_batches) - 1:
                    # One all-reduce per step: any rank's bad loss or stop signal is everyone's.
                    flags = torch.tensor([float(not finite), float(stop.requested)])
                    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
                    skip, stop_now = bool(flags[0]), bool(flags[1])
                    optimizer.skip_next = skip
                engine.backward(out.loss)
                engine.step()
                sums["loss"] = sums.get("loss", 0.0) + out.lm_loss.item()
                sums["total_loss"] = sums.get("total_loss", 0.0) + out.loss.item()
                for k, v in out.stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            optimizer.skip_next = False
            window_tokens += tokens_per_step
            bad_steps = bad_steps + [step] if skip else []
            if skip:
                progress.message(f"step {step}: non-finite loss, update skipped on all ranks")
            if step % t.log_interval == 0 or step == t.steps or skip:
                now = time.perf_counter()
                tokens_per_s = window_tokens / (now - window_start)
                window_tokens, window_start = 0, now
                means = _dp_mean({k: v / len(micro_batches) for k, v in sums.items()}, dp_group)
                grad_norm = engine.get_global_grad_norm()
                record: dict[str, Any] = {
                    "step": step,
                    "loss": means.pop("loss"),
                    "lr": lr,
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "tokens_per_s": tokens_per_s,
                    "tokens": step * tokens_per_step,
                    **means,
                }
                if skip:
                    record["skipped"] = True
                metrics.write(_finite_or_none(record))
                progress.update(step, record["loss"], lr, tokens_per_s)
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
                val_loss = evaluate(engine, val, t.micro_batch_size, dp_rank, topo.data, dp_group)
                metrics.write(_finite_or_none({"step": step, "val_loss": val_loss}))
                progress.message(f"step {step}: val loss {val_loss:.4f}")
            if step % t.save_interval == 0 or step == t.steps:
                save(step)
            if step % t.eval_interval == 0 or step % t.save_interval == 0:
                # Evaluation and saving are not training throughput.
                window_tokens, window_start = 0, time.perf_counter()
    finally:
        stop.restore()
        progress.close()
        metrics.close()
    return TrainResult(
        steps=t.steps,
        final_loss=float(last.get("loss", float("nan"))),
        val_loss=val_loss,
        tokens_per_s=float(last.get("tokens_per_s", float("nan"))),
        run_dir=run_dir,
    )
