"""The bytes of weights, gradients and optimizer state DeepSpeed's engine holds on a rank.

Imported by tests/model/test_cost.py; run under the deepspeed launcher (2 ranks) it measures
ZeRO 1-3 and expert parallelism and writes OUT_DIR/rank{R}.json:
    deepspeed --num_gpus 2 --module tests.model.engine_bytes_worker OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from modtrain.config import Config, load_config

# Where DeepSpeed 0.19's optimizers keep fp32 gradients and fp32 master weights.
FP32_GRADS = ("fp32_groups_gradients_flat", "averaged_gradients")
FP32_MASTER = ("fp32_groups_flat_partition", "single_partition_of_fp32_groups",
               "fp32_partitioned_groups_flat")
EXPERTS = ["model.moe.enabled=true", "model.moe.num_experts=4", "parallel.expert=2"]


def tiny_engine_config(zero: int, precision: str, extra: list[str] | None = None) -> Config:
    return load_config("configs/shakespeare_dense.yaml", [
        "model.vocab_size=67", "model.hidden_size=64", "model.num_layers=2",
        f"train.zero_stage={zero}", f"train.precision={precision}",
        "train.global_batch_size=4", "train.micro_batch_size=0", *(extra or [])])


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one flat buffer count once)."""
    seen = {}
    for t in tensors:
        if t is not None:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _flat(value) -> list:
    if isinstance(value, dict):
        value = list(value.values())
    if torch.is_tensor(value):
        return [value]
    return [t for v in value for t in _flat(v)] if isinstance(value, (list, tuple)) else []


def engine_state_bytes(config: Config, topo) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) bytes the DeepSpeed engine holds on this rank:
    weights and optimizer state after one step, gradients just before the optimizer steps
    (DeepSpeed frees them after)."""
    from modtrain.train.ds_config import deepspeed_config
    from modtrain.train.engine import build_engine

    engine, base, stepper = build_engine(config, topo, deepspeed_config(config, topo.data_size))
    grads: list[int] = []
    step = engine.step

    def counted_step() -> None:
        opt = engine.optimizer
        held = [p.grad for p in engine.module.parameters()]
        held += [t for a in FP32_GRADS for t in _flat(getattr(opt, a, None) or [])]
        grads.append(storage_bytes(held))
        step()

    engine.step = counted_step
    rows = torch.randint(0, config.model.vocab_size,
                         (config.train.global_batch_size // topo.data_size,
                          config.data.seq_length + 1),
                         generator=torch.Generator().manual_seed(topo.rank))
    stepper.train([rows.numpy()], stop_requested=False)
    opt = engine.optimizer
    states = [v for s in base.state.values() for v in s.values()
              if torch.is_tensor(v) and v.numel() > 1]  # m and v, not the step counters
    states += [t for a in FP32_MASTER for t in _flat(getattr(opt, a, None) or [])]
    return storage_bytes(engine.module.parameters()), grads[-1], storage_bytes(states)


def main(out: str) -> None:
    from modtrain.parallel import init_distributed

    topo = init_distributed()
    cases = [(1, 1, []), (2, 1, []), (3, 1, []), (1, 2, EXPERTS)]
    results = []
    for zero, expert, extra in cases:
        weights, grads, optim = engine_state_bytes(tiny_engine_config(zero, "bf16", extra), topo)
        results.append({"zero": zero, "expert": expert, "overrides": extra,
                        "weights": weights, "grads": grads, "optim": optim})
    Path(out, f"rank{topo.rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if not a.startswith("--local_rank")][0])
