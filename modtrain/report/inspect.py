"""`modtrain inspect PATH`: what a run directory, checkpoint, export or token store holds.

One command for every artifact: the config that made it, the step and parallel layout,
parameter count and FLOPs per token (from the same table and formulas training uses),
the dataset and tokenizer identity, and for a run the last logged metrics. Nothing is
unpickled: checkpoints are described from their JSON state, exports from config.json and
the safetensors header.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError

from modtrain.checkpoint.format import STATE_FILE
from modtrain.checkpoint.tags import candidate_tags, complete_tags, read_state
from modtrain.config import config_from_dict
from modtrain.config.load import read_yaml
from modtrain.config.schema import ModelConfig
from modtrain.data.tokenizer import file_sha256
from modtrain.errors import ModtrainError, shown
from modtrain.model.flops import model_flops
from modtrain.model.param_table import parameter_count
from modtrain.run_dir import CHECKPOINTS, CONFIG_FILE, METRICS_FILE, read_metrics


def _model_facts(model: dict[str, Any], seq_length: int) -> dict[str, Any]:
    m: ModelConfig = config_from_dict({"model": model, "data": {"seq_length": seq_length}}).model
    forward = model_flops(m, seq_length) / seq_length
    return {
        "layers": m.num_layers, "width": m.hidden_size, "heads": m.num_heads,
        "vocabulary": m.vocab_size, "routed_layers": m.routed_layer_ids,
        "capacity": m.mod.capacity if m.routed_layer_ids else None,
        "expert_layers": m.moe_layer_ids,
        "experts": (f"{m.moe.num_experts} + {m.moe.noop_experts} no-op, top-{m.moe.top_k}, "
                    f"capacity factor {m.moe.capacity_factor}") if m.moe_layer_ids else None,
        "parameters": parameter_count(m),
        "forward_flops_per_token": forward, "training_flops_per_token": 3 * forward,
    }


def _last_metrics(path: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for record in read_metrics(path):
        last.update({k: v for k, v in record.items() if v is not None})
    return last


def _identity(path: str, base: Path) -> dict[str, Any]:
    for candidate in (Path(path), base / path):
        if candidate.is_file():
            return {"path": str(candidate), "sha256": file_sha256(candidate)}
        if candidate.is_dir():
            attrs = json.loads((candidate / "zarr.json").read_text()).get("attributes", {}) \
                if (candidate / "zarr.json").is_file() else {}
            return {"path": str(candidate), "content_sha256": attrs.get("content_sha256"),
                    "tokenizer_sha256": attrs.get("tokenizer_sha256")}
    return {"path": path, "missing": True}


def _checkpoint(root: Path, tag: str) -> dict[str, Any]:
    state = read_state(root, tag)
    config = state.config
    return {
        "kind": "checkpoint", "path": str(root / tag), "step": state.step,
        "layout": state.layout.to_json() if state.layout else None, "config": config,
        "model": _model_facts(config["model"], config["data"]["seq_length"]),
    }


def inspect_path(path: str | Path) -> dict[str, Any]:
    """A description of `path` as a JSON-ready dict; one-line error for anything else."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return _described(_run, path, f"its {CONFIG_FILE} or its latest checkpoint's {STATE_FILE}")
    if (path / STATE_FILE).is_file():
        return _described(lambda p: _checkpoint(p.parent, p.name), path, STATE_FILE)
    if tags := candidate_tags(path):  # an empty or garbage `latest` hides no checkpoint
        return _described(lambda p: _checkpoint(p, tags[0]), path,
                          f"the latest checkpoint's {STATE_FILE}")
    if (path / "config.json").is_file():
        return _described(_export, path, "config.json or model.safetensors")
    if (path / "zarr.json").is_file():
        return _store(path)
    raise ModtrainError(f"{path} is not a run directory, checkpoint, export or token store; "
                        "pass one of those")


def _described(describe: Callable[[Path], dict[str, Any]], path: Path, files: str
               ) -> dict[str, Any]:
    """`describe(path)`, a damaged file in it (bad JSON or YAML, wrong types, missing keys)
    one line naming the files it reads."""
    try:
        return describe(path)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, yaml.YAMLError,
            SafetensorError) as e:
        raise ModtrainError(f"{path} cannot be described: {files} is damaged "
                            f"({type(e).__name__}: {shown(str(e))}); restore it from a copy"
                            ) from None


def _run(path: Path) -> dict[str, Any]:
    config = read_yaml(path / CONFIG_FILE)
    ckpts = path / CHECKPOINTS
    tags = candidate_tags(ckpts)
    tag = tags[0] if tags else None
    info: dict[str, Any] = {
        "kind": "run", "path": str(path),
        "latest_checkpoint": _checkpoint(ckpts, tag) if tag else None,
        "checkpoints": complete_tags(ckpts),
        "last_metrics": _last_metrics(path / METRICS_FILE),
        "parallel": config.get("parallel"),
        "data": {"store": _identity(config["data"]["store"], path),
                 "tokenizer": _identity(config["data"]["tokenizer"], path)},
    }
    model = dict(config["model"])
    if info["latest_checkpoint"]:  # the saved config knows the store's vocabulary size
        model = info["latest_checkpoint"]["config"]["model"]
        info["latest_checkpoint"].pop("config")
    if model.get("vocab_size", 0) > 0:
        info["model"] = _model_facts(model, config["data"]["seq_length"])
    return info


def _export(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    from modtrain.inference.export import read_export_config

    config = read_export_config(path)
    meta = config["modtrain"]
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = f.keys()
        shapes = [f.get_slice(k).get_shape() for k in names]  # read from the header only
    stored = sum(_numel(s) for s in shapes)
    return {
        "kind": "export", "path": str(path), "step": meta.get("step"),
        "architecture": config.get("architectures"), "dtype": config.get("torch_dtype"),
        "stored_parameters": stored,
        "model": _model_facts(meta["model"], meta["model"]["max_seq_length"]),
        "tokenizer": _identity("tokenizer.model", path),
    }


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _store(path: Path) -> dict[str, Any]:
    from modtrain.data.read.store import TokenStore

    store = TokenStore(path)
    return {
        "kind": "store", "path": str(path), "tokens": store.num_tokens,
        "documents": store.num_documents, "vocabulary": store.vocab_size,
        "dtype": str(store.tokens.dtype), "content_sha256": store.content_sha256,
        "tokenizer_sha256": store.tokenizer_sha256,
    }


def format_summary(info: dict[str, Any]) -> str:
    """The description as indented `key: value` lines (YAML)."""
    return yaml.safe_dump(info, sort_keys=False, default_flow_style=False, width=100).rstrip()
