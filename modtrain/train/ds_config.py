"""The DeepSpeed config, derived from modtrain's config (the one source of batch sizes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modtrain.config.schema import Config
from modtrain.errors import ModtrainError
from modtrain.train.grad_clip import modtrain_clips

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# DeepSpeed's own default bucket (elements): large enough that a 1B-7B model's gradients
# reduce in a few collectives, small enough to overlap them with the backward.
BUCKET_ELEMENTS = 500_000_000


def zero_section(stage: int, cuda: bool) -> dict[str, Any]:
    """ZeRO settings. On CUDA, stages 1 and 2 reduce gradient buckets on a side stream while
    the backward goes on (`overlap_comm`, off by DeepSpeed's default for them) into one
    contiguous buffer (no fragmentation); stage 3 overlaps by default. On CPU streams do
    not overlap, so nothing is gained and the defaults stay."""
    zero: dict[str, Any] = {"stage": stage}
    if cuda and stage in (1, 2):
        zero.update(overlap_comm=True, contiguous_gradients=True,
                    reduce_bucket_size=BUCKET_ELEMENTS, allgather_bucket_size=BUCKET_ELEMENTS)
    return zero


def precision_section(config: Config) -> dict[str, Any]:
    """bf16 / fp16 switches, and under bf16 fp32 gradient accumulation and reduction.

    DeepSpeed casts every parameter to bf16 and, without `data_types.grad_accum_dtype`,
    accumulates micro-batch gradients and all-reduces them in bf16 too. Its BF16 optimizer
    (ZeRO 1) and ZeRO 2/3 accumulate in fp32 when told; without ZeRO it has no such mix
    (Config.warnings says so)."""
    t = config.train
    out: dict[str, Any] = {
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "initial_scale_power": 16},
    }
    if t.precision == "bf16" and t.fp32_reduce:
        out["communication_data_type"] = "fp32"
        if t.zero_stage > 0:
            out["data_types"] = {"grad_accum_dtype": "fp32"}
    return out


def deepspeed_config(config: Config, data_parallel_size: int,
                     cuda: bool = False) -> dict[str, Any]:
    """The DeepSpeed config for `data_parallel_size` ranks; `cuda`: the ranks are GPUs."""
    t = config.train
    micro = t.micro_batch(data_parallel_size)
    derived: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.global_batch_size // (micro * data_parallel_size),
        # Without ZeRO in fp32 modtrain clips (train/grad_clip.py); DeepSpeed must not again.
        "gradient_clipping": 0.0 if modtrain_clips(config) else t.grad_clip,
        "zero_optimization": zero_section(t.zero_stage, cuda),
        **precision_section(config),
        "steps_per_print": 1 << 30,  # modtrain logs; silence DeepSpeed's own step lines
        "wall_clock_breakdown": False,
        # The optimizer is built by modtrain (parameter groups); ZeRO shards it.
        "zero_allow_untested_optimizer": True,
    }
    if t.deepspeed_config is None:
        return derived
    path = Path(t.deepspeed_config)
    if not path.is_file():
        raise ModtrainError(f"train.deepspeed_config={path} does not exist; see launch/*.json")
    try:
        user = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModtrainError(f"{path} is not valid JSON: {e}") from None
    for key in BATCH_KEYS:
        if key in user and user[key] != derived[key]:
            raise ModtrainError(
                f"{path} sets {key}={user[key]} but the modtrain config gives {derived[key]}; "
                "remove batch sizes from the JSON and set train.global_batch_size / "
                "train.micro_batch_size instead"
            )
    if user.get("gradient_clipping", t.grad_clip) != t.grad_clip:
        raise ModtrainError(
            f"{path} sets gradient_clipping={user['gradient_clipping']} but the modtrain config "
            f"gives train.grad_clip={t.grad_clip}; set train.grad_clip instead (or remove "
            "gradient_clipping from the JSON)"
        )
    user = {k: v for k, v in user.items() if k != "gradient_clipping"}
    stage = user.get("zero_optimization", {}).get("stage", t.zero_stage)
    if stage != t.zero_stage:
        # The checkpoint layout records train.zero_stage; a JSON stage would silently win.
        raise ModtrainError(
            f"{path} sets zero_optimization.stage={stage} but train.zero_stage={t.zero_stage}; "
            f"set train.zero_stage={stage} (or remove the stage from the JSON)"
        )
    if "optimizer" in user:
        raise ModtrainError(
            f"{path} defines an optimizer; modtrain builds AdamW from train.* settings, "
            "remove the 'optimizer' section"
        )
    return _merge(derived, user)
