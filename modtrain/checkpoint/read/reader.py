"""Read a modtrain training checkpoint (a DeepSpeed tag directory) without unpickling code.

RUN/checkpoints/<tag>/ holds DeepSpeed's model states (+ ZeRO optimizer partitions) and
modtrain.json (step, resolved config, parallel layout). Weights come back as full fp32
tensors under the training model's names, whatever the ZeRO stage and data-parallel size,
each built when it is asked for (checkpoint/read/lazy_tensors.py) from the memory-mapped files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from modtrain.checkpoint.files import check_tag
from modtrain.checkpoint.format import STATE_FILE, CheckpointState
from modtrain.checkpoint.read.lazy_tensors import LazyTensors
from modtrain.checkpoint.read.safe_load import load_weights_only
from modtrain.checkpoint.read.zero_merge import (
    OPTIMIZER_STATE,
    add_shared,
    merge_zero3,
    merge_zero12,
)
from modtrain.checkpoint.tags import candidate_tags, complete_tags, latest_tag, read_state
from modtrain.errors import ModtrainError
from modtrain.model.param_table import expert_index, gpt_name
from modtrain.model.tensor_split import full_shape
from modtrain.model.tensor_split import merge as merge_tensor_shards
from modtrain.progress_bar import bar
from modtrain.run_dir import CHECKPOINTS


@dataclass
class TrainingCheckpoint:
    tag_dir: Path
    step: int
    config: dict[str, Any]  # the full resolved training config, as config_to_dict writes it
    zero_stage: int
    data_parallel: int
    # fp32, the training model's state-dict names; each built when read (LazyTensors)
    tensors: Mapping[str, torch.Tensor]


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir, its checkpoints/ dir (both via `latest`) or a tag dir -> the tag dir."""
    path = Path(path)
    if candidate_tags(path / CHECKPOINTS) or latest_tag(path / CHECKPOINTS) is not None:
        path = path / CHECKPOINTS
    # the newest complete tag, even when `latest` is empty or garbage; a damaged one is
    # refused by name with the older ones that verify (_verify), never exported silently
    if candidates := candidate_tags(path):
        path = path / candidates[0]
    if path.is_dir() and any(path.glob("*model_states.pt")):
        return path
    raise ModtrainError(
        f"{path} holds no modtrain checkpoint (no 'latest' file and no model states); pass a "
        "run directory, its checkpoints/ directory or one checkpoint tag directory"
    )


def _rank(path: Path, key: str) -> int:
    match = re.search(rf"{key}_(\d+)", path.name)
    return int(match.group(1)) if match else 0


_LAYER_FILE = re.compile(r"layer_(\d+)(?:-model_(\d+))?-model_states\.pt")


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float()


def _merged_tensor(ranks: list[Mapping[str, torch.Tensor]], name: str) -> torch.Tensor:
    """One tensor merged from its tensor-parallel shards, built when it is read."""
    return merge_tensor_shards([r[name] for r in ranks], name)


def _merged(ranks: list[Mapping[str, torch.Tensor]], names: list[str] | None = None
            ) -> LazyTensors:
    """Tensor-parallel shards (rank order) joined the way megatron-core split them, one
    tensor at a time; `names`: those of the first rank by default."""
    out = LazyTensors()
    first = LazyTensors.of(ranks[0])
    for name in names if names is not None else list(first):
        out.add(name, tuple(full_shape(torch.Size(first.shape(name)), name, len(ranks))),
                partial(_merged_tensor, ranks, name))
    return out


def _read_pipeline(tag_dir: Path, num_layers: int) -> LazyTensors:
    """Weights of a pipeline checkpoint: DeepSpeed writes one file per layer (and per
    tensor rank) holding the module's own weights; names map back onto GPT's."""
    shards: dict[str, dict[int, LazyTensors]] = {}
    for path in bar(sorted(tag_dir.glob("layer_*-model_states.pt")), desc="read layers"):
        match = _LAYER_FILE.fullmatch(path.name)
        if match is None:
            continue
        layer, tp_rank = int(match.group(1)), int(match.group(2) or 0)
        for key, value in load_weights_only(path).items():
            if isinstance(value, torch.Tensor):
                name = gpt_name(f"{layer}.{key}", num_layers)
                one = LazyTensors()
                one.add_tensor(name, value, _fp32)
                shards.setdefault(name, {})[tp_rank] = one
    out = LazyTensors()
    for name, parts in shards.items():
        out.update_lazy(_merged([parts[r] for r in sorted(parts)], [name]))
    return out


def _modtrain_state(tag_dir: Path, model_state: dict[str, Any]) -> CheckpointState:
    """modtrain.json; older checkpoints carried the same in DeepSpeed's client state."""
    if (tag_dir / STATE_FILE).is_file():
        return read_state(tag_dir.parent, tag_dir.name)
    return CheckpointState.from_client_state(model_state, str(tag_dir))


def _module_weights(model_state: dict[str, Any]) -> LazyTensors:
    """ZeRO 0: the module's own (unpartitioned) parameters, upcast to fp32."""
    out = LazyTensors()
    for k, v in model_state["module"].items():
        if isinstance(v, torch.Tensor) and not k.endswith("_extra_state"):
            out.add_tensor(k, v, _fp32)
    return out


def _is_expert(name: str) -> bool:
    return expert_index(name) is not None


def _read_experts(tag_dir: Path, mp_rank: int) -> LazyTensors:
    """Expert weights (model.moe): DeepSpeed writes each expert of each expert layer to its
    own file under its global id, in the training precision (exact for fp32 training)."""
    files = sorted(tag_dir.glob(f"layer_*_expert_*_mp_rank_{mp_rank:02d}_model_states.pt"))
    tensors = LazyTensors()
    for path in bar(files, desc="read experts"):
        for k, v in load_weights_only(path).items():
            if isinstance(v, torch.Tensor):
                tensors.add_tensor(k, v, _fp32)
    return tensors


def _read_tensor_rank(tag_dir: Path, mp_rank: int) -> tuple[int, int, LazyTensors]:
    """(ZeRO stage, data-parallel size, full-precision weights) of one tensor-parallel rank."""
    name = f"mp_rank_{mp_rank:02d}_model_states.pt"
    if not (tag_dir / name).is_file():  # ZeRO-3 writes one model-state file per data rank
        name = f"zero_pp_rank_0_mp_rank_{mp_rank:02d}_model_states.pt"
    model_state = load_weights_only(tag_dir / name)
    optim_files = sorted(tag_dir.glob(f"*zero_pp_rank_*_mp_rank_{mp_rank:02d}_optim_states.pt"),
                         key=lambda f: _rank(f, "pp_rank"))
    experts = _read_experts(tag_dir, mp_rank)
    if not optim_files:
        tensors = _module_weights(model_state)
        tensors.update_lazy(experts)
        return 0, 1, tensors
    optim = [load_weights_only(f) for f in bar(optim_files, desc=f"read tensor rank {mp_rank}")]
    meta = optim[0][OPTIMIZER_STATE]
    # DeepSpeed's BF16 optimizer (ZeRO 1 with fp32 accumulation) writes no stage; its
    # partitions are laid out as ZeRO 1's, with the group padding at the end.
    stage = int(meta.get("zero_stage", 1))
    count = meta["partition_count"]
    count = max(count) if isinstance(count, list) else int(count)
    if count != len(optim_files):
        raise ModtrainError(f"{tag_dir} has {len(optim_files)} ZeRO partitions of {count}; "
                            "the checkpoint is incomplete, use an earlier tag")
    tensors = (merge_zero3(model_state, optim) if stage == 3
               else merge_zero12(model_state, optim, skip=_is_expert))
    tensors.update_lazy(experts)
    buffers = set(model_state.get("buffer_names") or [])
    for k, v in model_state["module"].items():
        if k in buffers:
            tensors.add_tensor(k, v, _fp32)
    add_shared(model_state, tensors)
    return stage, len(optim_files), tensors


def _verify(tag_dir: Path) -> None:
    """Refuse a tag whose files pickle code or do not match their saved checksums; for a
    damaged one, name the older tags beside it that verify."""
    problems, _ = check_tag(tag_dir)
    for problem in problems:
        if problem.kind == "unsafe":
            raise ModtrainError(problem.text)
    if not problems:
        return
    older = [t for t in reversed(complete_tags(tag_dir.parent))
             if t < tag_dir.name and not check_tag(tag_dir.parent / t)[0]]
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    raise ModtrainError(
        f"{tag_dir} is damaged ({problems[0].text}{more}); "
        + (f"these older checkpoints verify: {', '.join(older)} (pass one, e.g. "
           f"{tag_dir.parent / older[0]})" if older else "no older checkpoint beside it verifies")
    )


def read_checkpoint(path: str | Path) -> TrainingCheckpoint:
    tag_dir = resolve_checkpoint(path)
    _verify(tag_dir)
    model_files = sorted(tag_dir.glob("*model_states.pt"), key=lambda f: _rank(f, "pp_rank"))
    state = _modtrain_state(tag_dir, load_weights_only(model_files[0]))
    config = state.config
    if any(tag_dir.glob("layer_*-model_states.pt")):
        # The layer files hold the module weights in the training precision (exact for fp32).
        return TrainingCheckpoint(
            tag_dir=tag_dir, step=state.step, config=config,
            zero_stage=int(config["train"]["zero_stage"]),
            data_parallel=state.layout.data if state.layout else 1,
            tensors=_read_pipeline(tag_dir, int(config["model"]["num_layers"])),
        )
    tp_size = len({_rank(f, "mp_rank") for f in model_files})
    ranks = [_read_tensor_rank(tag_dir, r) for r in range(tp_size)]
    stage, data_parallel = ranks[0][0], ranks[0][1]
    partitions = len(list(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")))
    if stage and partitions != tp_size * data_parallel:
        raise ModtrainError(f"{tag_dir} has {partitions} ZeRO partitions of "
                            f"{tp_size * data_parallel}; the checkpoint is incomplete, use an "
                            "earlier tag")
    # Tensor-parallel shards join the way megatron-core split them (SwiGLU's halves apart).
    tensors = _merged([r[2] for r in ranks])
    return TrainingCheckpoint(
        tag_dir=tag_dir,
        step=state.step,
        config=config,
        zero_stage=stage,
        data_parallel=data_parallel,
        tensors=tensors,
    )
