"""`modtrain convert`: a DeepSpeed training checkpoint -> model.safetensors + config.json.

ZeRO partitions are merged by DeepSpeed's own fp32 reconstruction. The export holds no
pickle: tensors in safetensors, the model config in JSON, and the SentencePiece model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from modtrain.config import config_from_dict
from modtrain.config.schema import ModelConfig
from modtrain.errors import ModtrainError
from modtrain.train.checkpoint import latest_tag

EXPORT_FORMAT = "modtrain.export"
EXPORT_VERSION = 1
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """Accept a run dir, its checkpoints/ dir, or one tag dir; return (checkpoints dir, tag)."""
    path = Path(path)
    if (path / "checkpoints" / "latest").is_file():
        path = path / "checkpoints"
    if (path / "latest").is_file():
        return path, latest_tag(path)
    if path.is_dir() and any(path.glob("mp_rank_*_model_states.pt")):
        return path.parent, path.name
    raise ModtrainError(
        f"{path} holds no modtrain checkpoint (no 'latest' file and no model states); pass a "
        "run directory, its checkpoints/ directory or one checkpoint tag directory"
    )


def _client_state(ckpt_dir: Path, tag: str) -> dict[str, Any]:
    states = sorted((ckpt_dir / tag).glob("mp_rank_*_model_states.pt"))
    state = torch.load(states[0], map_location="cpu", weights_only=False)
    if "config" not in state:
        raise ModtrainError(f"{ckpt_dir / tag} was not written by modtrain (no config inside)")
    return state


def convert_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str = "fp32") -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if dtype not in _DTYPES:
        raise ModtrainError(f"--dtype {dtype} is unknown; use fp32, bf16 or fp16")
    ckpt_dir, tag = resolve_checkpoint(checkpoint)
    client = _client_state(ckpt_dir, tag)
    config = config_from_dict(client["config"])
    if config.parallel.tensor > 1 or config.parallel.pipeline > 1:
        raise ModtrainError(
            "this version converts checkpoints trained with parallel.tensor=1 and "
            "parallel.pipeline=1 only"
        )
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    tensors = {
        k: v.to(_DTYPES[dtype]).contiguous()
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = Path(config.data.tokenizer)
    if tokenizer.is_file():
        shutil.copyfile(tokenizer, out / "tokenizer.model")
    meta = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "model_type": "modtrain_gpt",
        "torch_dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
        "step": int(client.get("step", 0)),
        "modtrain": {"model": client["config"]["model"]},
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    return out


def load_export(export_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    export_dir = Path(export_dir)
    cfg_path = export_dir / "config.json"
    if not cfg_path.is_file() or not (export_dir / "model.safetensors").is_file():
        raise ModtrainError(
            f"{export_dir} is not a modtrain export (config.json and model.safetensors); "
            "create one with 'modtrain convert RUN_DIR --out EXPORT_DIR'"
        )
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise ModtrainError(f"{cfg_path} is not a modtrain export config")
    model = meta["modtrain"]["model"]
    # Validate the model section alone: the data section of training is not exported.
    model_config = config_from_dict(
        {"model": model, "data": {"seq_length": model["max_seq_length"]}}
    ).model
    return model_config, load_file(str(export_dir / "model.safetensors"))
