"""Every kind of GPT parameter in one table: its tensor-parallel split, its initialisation,
its name in the pipeline module and in the Hugging Face export.

Everything that needs to know a parameter by name derives it from `PARAMETERS`: the
tensor-parallel shard/merge rules (`model/tensor_split.py`), layout-independent initial
weights (`model/init.py`), pipeline <-> GPT renaming (universal checkpoints, the checkpoint
reader), and the export (`inference/hf_layout.py`). A new kind of parameter (an expert, a
router) is one new row.

Names are `GPT` state-dict names. A row's `local` name is the parameter's path inside its
part (the embedding, a block `blocks.N`, the final norm, the output projection); the same
path ends the parameter's name in the pipeline module, so rows match either naming.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modtrain.config.schema import ModelConfig


class Split(enum.Enum):
    """How megatron-core splits the parameter across tensor-parallel ranks."""

    REPLICATED = "replicated"  # every rank holds all of it
    COLUMN = "column"  # output features (dim 0); the vocabulary for embedding and head
    ROW = "row"  # input features (dim 1)
    GATED = "gated"  # SwiGLU fc1 [gate; up]: each rank holds [gate_r; up_r] (dim 0)


class Init(enum.Enum):
    ONES = "ones"  # RMSNorm gains
    NORMAL = "normal"  # N(0, init_std)
    NORMAL_DEPTH_SCALED = "normal_depth_scaled"  # residual-branch outputs: / sqrt(2 L)
    FAN_IN_UNIFORM = "fan_in_uniform"  # PyTorch's default Linear scale (the small predictor)


class Part(enum.Enum):
    """Where the parameter lives in GPT, and so its pipeline layer (numbered globally:
    0 embedding, 1..L blocks, L+1 final norm, L+2 output projection)."""

    EMBEDDING = "embedding"
    BLOCK = "block"
    FINAL_NORM = "final_norm"
    OUTPUT = "output"


# When a row exists for a model (and, for block rows, a block index).
Present = Callable[[ModelConfig, int], bool]
# Training tensor -> export tensors, in the order of the row's `hf` names.
ToHF = Callable[[torch.Tensor, ModelConfig], tuple[torch.Tensor, ...]]
# The full (unsplit) shape of the parameter.
Shape = Callable[[ModelConfig], tuple[int, ...]]


def _always(m: ModelConfig, i: int) -> bool:
    return True


def _untied(m: ModelConfig, i: int) -> bool:
    return not m.tie_embeddings


def _dense_mlp(m: ModelConfig, i: int) -> bool:
    return i not in m.moe_layer_ids


def _experts(m: ModelConfig, i: int) -> bool:
    return i in m.moe_layer_ids


def _routed(m: ModelConfig, i: int) -> bool:
    return i in m.routed_layer_ids


def _routed_with_predictor(m: ModelConfig, i: int) -> bool:
    return i in m.routed_layer_ids and m.mod.predictor


def _vocab_rows(t: torch.Tensor, m: ModelConfig) -> tuple[torch.Tensor, ...]:
    """Rows past vocab_size pad the vocabulary for tensor parallelism: the export drops them."""
    return (t[: m.vocab_size],)


def _qkv(t: torch.Tensor, m: ModelConfig) -> tuple[torch.Tensor, ...]:
    """megatron's linear_qkv rows are grouped per query group as [q heads, k, v] (head_dim rows
    each; without GQA one group per head)."""
    heads = groups = m.num_heads
    head_dim = m.hidden_size // heads
    w = t.view(groups, (heads // groups + 2) * head_dim, -1)
    q, k, v = w.split([heads // groups * head_dim, head_dim, head_dim], dim=1)
    hidden = w.shape[-1]
    return (q.reshape(heads * head_dim, hidden), k.reshape(groups * head_dim, hidden),
            v.reshape(groups * head_dim, hidden))


def _gate_up(t: torch.Tensor, m: ModelConfig) -> tuple[torch.Tensor, ...]:
    """megatron's SwiGLU fc1 rows are [gate; up]."""
    return tuple(t.chunk(2, dim=0))


@dataclass(frozen=True)
class ParamKind:
    part: Part
    local: str  # path inside the part; `GPT` name = part prefix + local
    shape: Shape
    split: Split
    init: Init
    hf: tuple[str, ...]  # export names; in a block relative to `model.layers.N.`
    to_hf: ToHF | None = None  # None: the tensor as it is
    present: Present = _always
    # One parameter per expert: `local` and `hf` hold "{e}", the global expert id (model.moe).
    per_expert: bool = False

    def matches(self, name: str) -> re.Match | None:
        """Match a GPT/pipeline name ending in this row's local path ("{e}": any id)."""
        return _local_pattern(self.local).search(name)


_PATTERNS: dict[str, re.Pattern] = {}


def _local_pattern(local: str) -> re.Pattern:
    if local not in _PATTERNS:
        body = re.escape(local).replace(re.escape("{e}"), r"(\d+)")
        _PATTERNS[local] = re.compile(r"(?:^|\.)" + body + "$")
    return _PATTERNS[local]


def _vocab_by_width(m: ModelConfig) -> tuple[int, ...]:
    return (m.padded_vocab_size, m.hidden_size)


def _width(m: ModelConfig) -> tuple[int, ...]:
    return (m.hidden_size,)


def _predictor_shape(j: int, p: str) -> Shape:
    def shape(m: ModelConfig) -> tuple[int, ...]:
        d, h = m.hidden_size, m.mod.predictor_hidden
        return {(0, "weight"): (h, d), (0, "bias"): (h,), (2, "weight"): (1, h),
                (2, "bias"): (1,)}[(j, p)]
    return shape


_PREDICTOR = [
    ParamKind(Part.BLOCK, f"router.predictor.{j}.{p}", _predictor_shape(j, p),
              Split.REPLICATED, Init.FAN_IN_UNIFORM,
              (f"router.predictor.{j}.{p}",), present=_routed_with_predictor)
    for j in (0, 2) for p in ("weight", "bias")
]

_EXPERT = "layer.mlp.moe.deepspeed_moe.experts.deepspeed_experts.{e}."  # DeepSpeed's MoE tree

_EXPERTS = [
    ParamKind(Part.BLOCK, "layer.mlp.moe.deepspeed_moe.gate.weight",
              lambda m: (m.moe.num_experts + m.moe.noop_experts, m.hidden_size),
              Split.REPLICATED, Init.NORMAL, ("mlp.gate.weight",), present=_experts),
    ParamKind(Part.BLOCK, _EXPERT + "fc1.weight",
              lambda m: (2 * m.expert_ffn_size, m.hidden_size), Split.REPLICATED, Init.NORMAL,
              ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"), _gate_up,
              present=_experts, per_expert=True),
    ParamKind(Part.BLOCK, _EXPERT + "fc2.weight",
              lambda m: (m.hidden_size, m.expert_ffn_size), Split.REPLICATED,
              Init.NORMAL_DEPTH_SCALED, ("mlp.experts.{e}.down_proj.weight",),
              present=_experts, per_expert=True),
]

PARAMETERS: tuple[ParamKind, ...] = (
    ParamKind(Part.EMBEDDING, "embedding.weight", _vocab_by_width, Split.COLUMN, Init.NORMAL,
              ("model.embed_tokens.weight",), _vocab_rows),
    ParamKind(Part.BLOCK, "layer.input_layernorm.weight", _width, Split.REPLICATED, Init.ONES,
              ("input_layernorm.weight",)),
    ParamKind(Part.BLOCK, "layer.self_attention.linear_qkv.weight",
              lambda m: (3 * m.hidden_size, m.hidden_size), Split.COLUMN, Init.NORMAL,
              ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
              _qkv),
    ParamKind(Part.BLOCK, "layer.self_attention.linear_proj.weight",
              lambda m: (m.hidden_size, m.hidden_size), Split.ROW, Init.NORMAL_DEPTH_SCALED,
              ("self_attn.o_proj.weight",)),
    ParamKind(Part.BLOCK, "layer.pre_mlp_layernorm.weight", _width, Split.REPLICATED, Init.ONES,
              ("post_attention_layernorm.weight",)),
    ParamKind(Part.BLOCK, "layer.mlp.linear_fc1.weight",
              lambda m: (2 * m.ffn_size, m.hidden_size), Split.GATED, Init.NORMAL,
              ("mlp.gate_proj.weight", "mlp.up_proj.weight"), _gate_up, present=_dense_mlp),
    ParamKind(Part.BLOCK, "layer.mlp.linear_fc2.weight",
              lambda m: (m.hidden_size, m.ffn_size), Split.ROW, Init.NORMAL_DEPTH_SCALED,
              ("mlp.down_proj.weight",), present=_dense_mlp),
    *_EXPERTS,
    ParamKind(Part.BLOCK, "router.proj.weight", lambda m: (1, m.hidden_size), Split.REPLICATED,
              Init.NORMAL, ("router.proj.weight",), present=_routed),
    *_PREDICTOR,
    ParamKind(Part.FINAL_NORM, "final_norm.weight", _width, Split.REPLICATED, Init.ONES,
              ("model.norm.weight",)),
    ParamKind(Part.OUTPUT, "output_layer.weight", _vocab_by_width, Split.COLUMN, Init.NORMAL,
              ("lm_head.weight",), _vocab_rows, present=_untied),
)

_HF_LAYER = "model.layers.{}."
TIED_PREFIX = "tied_modules.embed."  # DeepSpeed's name for the tied embedding/head module


def param_kind(name: str) -> ParamKind | None:
    """The row of a GPT or pipeline-module parameter name (matched by its local path)."""
    for kind in PARAMETERS:
        if kind.matches(name):
            return kind
    return None


def row_of(name: str) -> ParamKind:
    """The row of a name known to be a parameter of the table (ValueError otherwise)."""
    kind = param_kind(name)
    if kind is None:
        raise ValueError(f"{name} has no row in the parameter table")
    return kind


def _expert_match(name: str) -> re.Match | None:
    kind = param_kind(name)
    return kind.matches(name) if kind is not None and kind.per_expert else None


def expert_index(name: str) -> int | None:
    """The expert id in a per-expert parameter name (local or global, as the name has it)."""
    match = _expert_match(name)
    return None if match is None else int(match.group(1))


def with_expert_index(name: str, index: int) -> str:
    """`name` with its expert id replaced (local <-> global ids under expert parallelism)."""
    match = _expert_match(name)
    if match is None:
        raise ValueError(f"{name} is not a per-expert parameter")
    return name[: match.start(1)] + str(index) + name[match.end(1):]


def block_index(name: str) -> int | None:
    """N of a `blocks.N.` GPT name; None outside the blocks."""
    head, _, rest = name.partition(".")
    return int(rest.partition(".")[0]) if head == "blocks" else None


def gpt_parameter_names(m: ModelConfig) -> list[str]:
    """Every parameter name of `GPT(m)`, from the table."""
    names = []
    for kind in PARAMETERS:
        if kind.part is not Part.BLOCK:
            if kind.present(m, -1):
                names.append(kind.local)
            continue
        experts = range(m.moe.num_experts) if kind.per_expert else [None]
        names += [f"blocks.{i}.{kind.local}".replace("{e}", str(e)) for i in range(m.num_layers)
                  if kind.present(m, i) for e in experts]
    return names


def parameter_count(m: ModelConfig) -> int:
    """Parameters of `GPT(m)` (padded vocabulary included), from the table's shapes."""
    total = 0
    for name in gpt_parameter_names(m):
        count = 1
        for size in row_of(name).shape(m):
            count *= size
        total += count
    return total


def hf_names(name: str) -> tuple[str, ...]:
    """Export names of one GPT parameter (empty when the table has no row for it)."""
    kind = param_kind(name)
    if kind is None or (kind.part is Part.BLOCK) != (block_index(name) is not None):
        return ()
    if kind.part is not Part.BLOCK:
        return kind.hf
    prefix = _HF_LAYER.format(block_index(name))
    expert = expert_index(name)
    return tuple(prefix + (n.replace("{e}", str(expert)) if kind.per_expert else n)
                 for n in kind.hf)


def hf_tensors(name: str, tensor: torch.Tensor, m: ModelConfig) -> dict[str, torch.Tensor]:
    """Export tensors of one GPT parameter; empty when it has no place in the export."""
    names = hf_names(name)
    if not names:
        return {}
    kind = row_of(name)
    parts = kind.to_hf(tensor, m) if kind.to_hf else (tensor,)
    return dict(zip(names, parts, strict=True))


def hf_parameter_names(m: ModelConfig) -> set[str]:
    """Every tensor name an export of `m` holds."""
    return {n for name in gpt_parameter_names(m) for n in hf_names(name)}


def gpt_name(pipeline_name: str, num_layers: int) -> str:
    """Map a pipeline-module parameter name onto the equivalent `GPT` parameter name."""
    if pipeline_name.startswith(TIED_PREFIX):
        return pipeline_name.removeprefix(TIED_PREFIX)
    head, rest = pipeline_name.split(".", 1)
    layer = int(head)
    if 1 <= layer <= num_layers:
        return f"blocks.{layer - 1}.{rest.removeprefix('block.')}"
    return rest  # embedding.weight, final_norm.weight, output_layer.weight


def pipeline_name(name: str, num_layers: int, tie_embeddings: bool) -> str:
    """Map a `GPT` parameter name onto the pipeline module's (the inverse of `gpt_name`)."""
    kind = param_kind(name)
    index = block_index(name)
    if kind is None or (kind.part is Part.BLOCK) != (index is not None):
        raise ValueError(f"{name} is not a GPT parameter name")
    if kind.part is Part.EMBEDDING:
        return (TIED_PREFIX if tie_embeddings else "0.") + name
    if index is not None:  # a block's parameter (checked against its row above)
        return f"{index + 1}.block.{name.split('.', 2)[2]}"
    if kind.part is Part.FINAL_NORM:
        return f"{num_layers + 1}.{name}"
    return f"{num_layers + 2}.{name}"
