"""`modtrain convert`: a training checkpoint -> a Hugging Face-loadable export directory.

EXPORT_DIR/ model.safetensors, config.json, tokenizer.model, and for a MoD or MoE model
the modelling code (hf_template.REMOTE_CODE_FILES). No
pickle anywhere: tensors in safetensors, everything else JSON, Python source or the
SentencePiece model. The directory is written next to its destination and renamed into
place, so an interrupted convert leaves no half export. Format: docs/export_format.md.
The weights stream: each training tensor is read from the checkpoint, split, cast and
written into model.safetensors in turn, so host memory holds about one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from modtrain.checkpoint.read.lazy_tensors import LazyTensors
from modtrain.checkpoint.read.reader import read_checkpoint
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError, shown
from modtrain.inference.hf_layout import EXPORT_FORMAT, hf_config, hf_shapes, iter_hf_tensors
from modtrain.inference.hf_template import REMOTE_CODE_FILES
from modtrain.inference.hf_template.modtrain_core import CoreConfig, ModtrainLM
from modtrain.inference.safetensors_stream import SafetensorsWriter

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _find_tokenizer(configured: str, tag_dir: Path, override: str | Path | None) -> Path:
    if override is not None:
        candidates = [Path(override)]
    else:
        # Relative paths in the config are relative to where training ran; try the run dir.
        candidates = [Path(configured), tag_dir.parent.parent / configured]
    for path in candidates:
        if path.is_file():
            return path
    raise ModtrainError(
        f"tokenizer {candidates[0]} does not exist; run convert from the directory training "
        "ran in, or pass --tokenizer PATH.model"
    )


def _eos_id(tokenizer: Path) -> int | None:
    eos = Tokenizer(tokenizer).sp.eos_id()
    return eos if eos >= 0 else None


def check_vocabulary(tokenizer_vocab: int, model_vocab: int, tokenizer: str | Path,
                     fix: str) -> None:
    """A tokenizer fits a model only with exactly the model's token ids: a smaller one cannot
    decode what the model samples, a larger one encodes ids the model has no row for."""
    if tokenizer_vocab != model_vocab:
        raise ModtrainError(
            f"tokenizer {tokenizer} has {tokenizer_vocab} tokens but the model was trained "
            f"on {model_vocab}; {fix}"
        )


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary exports of `out` whose convert was killed (its process is gone)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue  # another convert to the same place is still writing
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_out(out: Path) -> None:
    """`out` may be replaced: absent, an empty directory or an earlier export."""
    if out.exists() and not out.is_dir():
        raise ModtrainError(f"--out {out} is a file; give a directory for the export")
    if out.exists() and any(out.iterdir()) and not _is_export(out):
        raise ModtrainError(f"{out} exists and is not a modtrain export; choose another "
                            "--out or remove it")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished export to `out`, replacing an earlier export there."""
    if out.exists():
        _check_out(out)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def _is_export(path: Path) -> bool:
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    info = meta.get("modtrain") if isinstance(meta, dict) else None
    return isinstance(info, dict) and info.get("format") == EXPORT_FORMAT


def convert_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str = "fp32",
                       tokenizer: str | Path | None = None) -> Path:
    if dtype not in DTYPES:
        raise ModtrainError(f"--dtype {dtype} is unknown; use fp32, bf16 or fp16")
    _check_out(Path(out))
    ckpt = read_checkpoint(checkpoint)
    tok = _find_tokenizer(ckpt.config.get("data", {}).get("tokenizer", ""), ckpt.tag_dir,
                          tokenizer)
    check_vocabulary(Tokenizer(tok).vocab_size,
                     ckpt.config["model"]["vocab_size"], tok,
                     "pass the tokenizer training used with --tokenizer PATH.model")
    return write_export(ckpt.tensors, ckpt.config["model"], out, tok, dtype, ckpt.step)


def _write_weights(path: Path, tensors: Mapping[str, torch.Tensor], model: dict[str, Any],
                   dtype: torch.dtype) -> None:
    """model.safetensors, one training tensor in memory at a time; the same bytes as
    safetensors' save_file of every export tensor at once."""
    lazy = LazyTensors.of(tensors)
    shapes = hf_shapes({name: lazy.shape(name) for name in lazy}, model)
    with SafetensorsWriter(path, shapes, dtype, metadata={"format": "pt"}) as writer:
        for name, tensor in iter_hf_tensors(lazy, model):
            writer.write(name, tensor.to(dtype))


def write_export(tensors: Mapping[str, torch.Tensor], model: dict[str, Any], out: str | Path,
                 tokenizer: Path, dtype: str = "fp32", step: int = 0) -> Path:
    """Write the training model's state dict (`tensors`; a LazyTensors is read one tensor
    at a time) and model config as an export."""
    config = hf_config(model, dtype, step, _eos_id(tokenizer))
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _write_weights(tmp / "model.safetensors", tensors, model, DTYPES[dtype])
        # safetensors creates its file private (0600); give it the mode (umask) of the rest.
        os.chmod(tmp / "model.safetensors", (tmp / "config.json").stat().st_mode & 0o777)
        shutil.copyfile(tokenizer, tmp / "tokenizer.model")
        if "auto_map" in config:
            template = resources.files("modtrain.inference.hf_template")
            for name in REMOTE_CODE_FILES:
                (tmp / name).write_text(template.joinpath(name).read_text())
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_export_config(export_dir: str | Path) -> dict[str, Any]:
    export_dir = Path(export_dir)
    if not _is_export(export_dir) or not (export_dir / "model.safetensors").is_file():
        raise ModtrainError(
            f"{export_dir} is not a modtrain export (config.json and model.safetensors); "
            "create one with 'modtrain convert RUN_DIR --out EXPORT_DIR'"
        )
    return json.loads((export_dir / "config.json").read_text())


def _core_config(export_dir: Path) -> CoreConfig:
    """config.json as the model's config, every field of its declared type."""
    damaged = f"export {export_dir}: config.json is damaged"
    try:
        config = CoreConfig.from_dict(read_export_config(export_dir))
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        raise ModtrainError(f"{damaged} ({type(e).__name__}: {shown(str(e))}); convert the "
                            "checkpoint again") from None
    for f in dataclasses.fields(config):
        v, kind = getattr(config, f.name), str(f.type)
        ok = (isinstance(v, list) and all(type(i) is int for i in v) if kind.startswith("list")
              else type(v) is bool if kind == "bool" else isinstance(v, str) if kind == "str"
              else type(v) in (int, float) if kind == "float" else type(v) is int)
        if not ok:
            raise ModtrainError(f"{damaged}: {f.name} is {shown(v)}, not {kind}; convert the "
                                "checkpoint again")
    return config


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the safetensors header, reading no tensor data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise ModtrainError(f"{path} is damaged or truncated ({shown(str(e))}); convert the "
                            "checkpoint again") from None


def _check_tensors(export_dir: Path, config: CoreConfig) -> None:
    """config.json against the safetensors header, before anything is allocated: a size in
    config.json that lies would otherwise allocate whatever it says."""
    stored = _stored_shapes(export_dir / "model.safetensors")
    layers = {int(k.split(".")[2]) for k in stored if k.startswith("model.layers.")
              and k.split(".")[2].isdigit()}
    # The counts that size loops in the model's constructor, bounded by the file first.
    if config.num_hidden_layers != len(layers) or config.moe_num_experts > len(stored):
        raise ModtrainError(f"export {export_dir}: config.json (num_hidden_layers="
                            f"{config.num_hidden_layers}, moe_num_experts={config.moe_num_experts})"
                            f" does not fit model.safetensors ({len(layers)} layers, {len(stored)} "
                            "tensors); convert the checkpoint again")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in ModtrainLM(config).state_dict().items()}
    except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError) as e:
        raise ModtrainError(f"export {export_dir}: config.json describes no model "
                            f"({shown(str(e))}); convert the checkpoint again") from None
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        stored = {k: v for k, v in stored.items() if k != "lm_head.weight"}
    for name in sorted(set(expected) | set(stored)):
        if expected.get(name) != stored.get(name):
            raise ModtrainError(
                f"export {export_dir} does not match its config.json: {name} is "
                f"{stored.get(name, 'missing')} in model.safetensors, config.json implies "
                f"{expected.get(name, 'no such tensor')}; convert the checkpoint again")


def load_export(export_dir: str | Path, dtype: torch.dtype = torch.float32,
                inference_routing: str | None = None) -> ModtrainLM:
    """The export as modtrain's plain-torch inference model, in eval mode.

    inference_routing overrides the export's causal routing: "predictor" or "router".
    """
    export_dir = Path(export_dir)
    config = _core_config(export_dir)
    _check_tensors(export_dir, config)
    if inference_routing is not None:
        if inference_routing not in ("predictor", "router"):
            raise ModtrainError(f"--routing {inference_routing} is unknown; use predictor or "
                                "router")
        if inference_routing == "predictor" and config.mod_routed_layers and \
                not config.mod_predictor_hidden:
            raise ModtrainError("this export has no predictor; use --routing router")
        config.mod_inference_routing = inference_routing
    model = ModtrainLM(config)
    try:
        tensors = load_file(str(export_dir / "model.safetensors"))
    except Exception as e:  # safetensors reports bad data in its own and in builtin types
        raise ModtrainError(f"{export_dir / 'model.safetensors'} cannot be read ("
                            f"{shown(str(e))}); convert the checkpoint again") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModtrainError(f"export {export_dir} does not match its config.json: missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(dtype).eval()
