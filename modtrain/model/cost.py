"""Memory, communication and step-time cost of a model on a parallel layout (for planning).

Parameter counts come from the parameter table (`model/param_table.py`), FLOPs from
`model/flops.py`; this module adds bytes and seconds. Byte models:
  model states   DeepSpeed's accounting (its ZeRO estimators): mixed precision holds 2 B of
                 16-bit weights, 2 B of 16-bit gradients, 4 B of fp32 gradients, 4 B of fp32
                 master weights and 8 B of Adam m, v per parameter; ZeRO-1 shards the fp32
                 part (but bf16 ZeRO-1's fp32 gradients: DeepSpeed's BF16_Optimizer keeps them
                 whole), ZeRO-2 the 16-bit gradients too, ZeRO-3 everything (18 B, no separate
                 16-bit gradient; plus one gathered layer, 4 B a parameter). fp32 training:
                 4 B weights, 4 B gradients, 8 B m, v (+ 4 B: the ZeRO optimizer's own fp32
                 partition under ZeRO 1-3). Checked against the bytes DeepSpeed's engine
                 holds after a step on CPU (tests/model/test_cost.py).
  activations    tensors autograd saves, per token of a micro-batch: a block holds
                 12d + 4f elements (+ a heads' log-sum-exp, 2 norm scales in fp32); a routed
                 block that much for its k = ceil(c S) tokens plus the router's d + 2 on every
                 token; the final norm 3d + 1, the logits V in fp32. Full recomputation keeps
                 each block's input (d) and one block's activations. Measured against
                 saved_tensors_hooks (tests/model/test_cost.py): dense exact, MoD within 2 %
                 (fp32 on CPU; bf16 counts the fp32 scalars at 2 B, TP splits approximate).
  communication  ring collectives, bytes sent per GPU per step; seconds from `Links`
                 (NVLink inside a node, InfiniBand across), exposed as `exposed_comm_seconds`
                 says and added to the step time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modtrain.config.schema import ModelConfig, tokens_per_row
from modtrain.model.flops import training_flops_per_token
from modtrain.model.param_table import (
    Part,
    Split,
    expert_index,
    gpt_parameter_names,
    row_of,
)

RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Layout:
    """One way to place a model on `gpus` GPUs, and how each rank steps."""

    tensor: int = 1
    pipeline: int = 1
    data: int = 1
    expert: int = 1
    zero_stage: int = 0
    micro_batch: int = 1
    recompute: str = "none"  # none | selective | full (train.recompute)
    precision: str = "bf16"  # bf16 | fp32
    sequence_parallel: bool = False  # parallel.sequence_parallel (needs tensor > 1)

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline * self.data


@dataclass(frozen=True)
class Params:
    """Parameter counts of one rank's largest pipeline stage, after TP and EP splits."""

    dense: int  # replicated over all data-parallel ranks
    expert: int  # replicated over the expert-data-parallel ranks only (data / expert)
    largest_layer: int  # the biggest single block or embedding (ZeRO-3 gathers one at a time)

    @property
    def total(self) -> int:
        return self.dense + self.expert


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def parameter_count_by_part(m: ModelConfig) -> dict[str, int]:
    """Unsplit parameters: "embedding", "blocks.N", "final_norm", "output"."""
    parts: dict[str, int] = {}
    for name in gpt_parameter_names(m):
        key = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else name.split(".")[0]
        parts[key] = parts.get(key, 0) + _numel(row_of(name).shape(m))
    return parts


_ROWS: dict[str, list] = {}


def _parameter_rows(m: ModelConfig) -> list:
    """(name, table row, expert index, elements) of every parameter; cached by the config's
    text, since a plan asks for the same model's table for thousands of layouts."""
    key = repr(m)
    if key not in _ROWS:
        if len(_ROWS) > 16:
            _ROWS.clear()
        _ROWS[key] = [(name, row_of(name), expert_index(name), _numel(row_of(name).shape(m)))
                      for name in gpt_parameter_names(m)]
    return _ROWS[key]


def rank_params(m: ModelConfig, layout: Layout) -> Params:
    """Parameters held by one rank of the largest pipeline stage (before ZeRO sharding)."""
    per_stage = -(-m.num_layers // layout.pipeline)
    stages: list[list[int]] = [[0, 0] for _ in range(layout.pipeline)]
    layer_sizes: dict[str, int] = {}
    for name, kind, expert, n in _parameter_rows(m):
        if expert is not None and expert >= m.moe.num_experts // layout.expert:
            continue  # another expert-parallel rank's expert
        if kind.split is not Split.REPLICATED:
            n //= layout.tensor
        if kind.part is Part.BLOCK:
            block = int(name.split(".")[1])
            owners, layer = [block // per_stage], f"blocks.{block}"
        elif kind.part is Part.EMBEDDING:
            # DeepSpeed's pipeline ties the embedding into the first and the last stage.
            tied = m.tie_embeddings and layout.pipeline > 1
            owners, layer = [0, layout.pipeline - 1] if tied else [0], kind.part.value
        else:
            owners, layer = [layout.pipeline - 1], kind.part.value
        slot = 1 if kind.per_expert else 0
        for stage in owners:
            stages[stage][slot] += n
        layer_sizes[layer] = layer_sizes.get(layer, 0) + n
    dense, expert = max(stages, key=sum)
    return Params(dense, expert, max(layer_sizes.values()))


@dataclass(frozen=True)
class ModelStates:
    """Bytes per GPU of weights, gradients and optimizer state."""

    params: float
    grads: float
    optim: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optim


def model_state_bytes(params: Params, layout: Layout) -> ModelStates:
    """DeepSpeed's ZeRO accounting (stage 0-3), sharded over each parameter's data group."""
    mixed = layout.precision != "fp32"
    zero = layout.zero_stage
    # Bytes per parameter. fp32 under ZeRO: DeepSpeed's ZeRO optimizer still copies the
    # weights into its own flat fp32 partition (measured: tests/model/test_cost.py).
    w, g16, g32, optim = (2, 2, 4, 12) if mixed else (4, 0, 4, 12 if zero else 8)
    out = [0.0, 0.0, 0.0]
    for count, group in ((params.dense, layout.data),
                         (params.expert, max(1, layout.data // layout.expert))):
        out[0] += count * w / (group if zero >= 3 else 1)
        # ZeRO-3 reduces 16-bit gradients straight into the fp32 partition (DeepSpeed: 18 B).
        # bf16 ZeRO-1 (DeepSpeed's BF16_Optimizer) keeps every parameter's fp32 gradient.
        g32_group = group if zero >= 2 or (zero == 1 and not mixed) else 1
        out[1] += count * (g16 if zero < 3 else 0) / (group if zero >= 2 else 1) + (
            count * g32 / g32_group)
        out[2] += count * optim / (group if zero >= 1 else 1)
    if zero >= 3:
        out[0] += 4 * params.largest_layer  # one layer gathered for its forward/backward
    return ModelStates(*out)


def _block_elements(m: ModelConfig, tokens: int, experts: bool, layout: Layout) -> float:
    """Saved elements of one block over `tokens` tokens (16-bit part, fp32 part)."""
    d, a, tensor = m.hidden_size, m.num_heads, layout.tensor
    if experts:
        moe = m.moe
        slots = moe.num_experts * moe.top_k * moe.capacity_factor / (moe.num_experts
                                                                     + moe.noop_experts)
        # Per expert slot: fc1's output and the activation (4 f_e); per token the
        # dispatched input and the combined output (slots + top_k rows of d) and the gate's
        # logits, probabilities and route indices (about n + 10 top_k; fitted on CPU).
        mlp = (4 * m.expert_ffn_size * slots + (slots + moe.top_k) * d
               + 2 * (moe.num_experts + moe.noop_experts) + 10 * moe.top_k - 1)
    else:
        mlp = 4 * m.ffn_size / tensor
    if layout.recompute == "selective":
        # Reran in backward: RoPE'd queries and keys and the softmax statistics (2d + a),
        # silu(gate) and its product's second copy (f of the 4f).
        a_part = 4 * d
        mlp -= (m.expert_ffn_size * slots if experts else m.ffn_size / tensor)
    else:
        a_part = 6 * d + a
    # Norm inputs/outputs and residuals are whole on every TP rank, a 1/TP sequence shard
    # under sequence parallelism; projections and attention are split.
    whole = 6 * d / (tensor if layout.sequence_parallel else 1)
    return tokens * (whole + a_part / tensor + mlp + 2)


def activation_bytes(m: ModelConfig, layout: Layout, seq: int, layers: int | None = None,
                     head: bool = True) -> float:
    """Bytes autograd saves for one micro-batch through `layers` blocks (default: the
    first stage's share) and, with `head`, the final norm and the loss."""
    e = 2 if layout.precision != "fp32" else 4
    tokens = layout.micro_batch * seq
    per_stage = -(-m.num_layers // layout.pipeline)
    blocks = range(per_stage if layers is None else layers)
    routed, experts = set(m.routed_layer_ids), set(m.moe_layer_ids)
    sizes = []
    shard = layout.tensor if layout.sequence_parallel else 1
    for i in blocks:
        if i in routed:
            k = layout.micro_batch * tokens_per_row(m.mod.capacity, seq)
            sizes.append(e * _block_elements(m, k, i in experts, layout)
                         + tokens * (e * m.hidden_size + 8) / shard)
        else:
            sizes.append(e * _block_elements(m, tokens, i in experts, layout))
    if layout.recompute == "full":
        total = len(sizes) * tokens * e * m.hidden_size + max(sizes, default=0)
    else:
        total = sum(sizes)
    if head:
        total += tokens * (e * (3 * m.hidden_size + 1) / shard + 4 * m.padded_vocab_size
                           / layout.tensor
                           + 16)  # final norm, fp32 logits, int64 tokens and labels
        total += 2 * seq * (m.hidden_size // m.num_heads) * e + 4  # RoPE cos/sin, the loss
    return total


def kv_cache_bytes(m: ModelConfig, batch: int, context: int, tensor: int = 1,
                   bytes_per_element: int = 2) -> float:
    """Keys and values for sampling: a routed block caches only its routed tokens
    (about capacity x context of them)."""
    routed = set(m.routed_layer_ids)
    per_token = sum(m.mod.capacity if i in routed else 1.0 for i in range(m.num_layers))
    return 2 * batch * context * per_token * m.hidden_size * bytes_per_element / tensor


def bubble_fraction(pipeline: int, micro_batches: int) -> float:
    """Idle share of a 1F1B pipeline step: (p - 1) / (m + p - 1)."""
    return (pipeline - 1) / (micro_batches + pipeline - 1)


def comm_bytes(m: ModelConfig, layout: Layout, seq: int, global_batch: int) -> dict[str, float]:
    """Bytes each GPU sends per optimizer step, by kind (ring algorithms)."""
    e = 2 if layout.precision != "fp32" else 4
    params = rank_params(m, layout)
    micro_batches = global_batch // (layout.data * layout.micro_batch)
    out = {"dp": 0.0, "tp": 0.0, "ep": 0.0, "pp": 0.0}
    for count, group in ((params.dense, layout.data),
                         (params.expert, max(1, layout.data // layout.expert))):
        ring = (group - 1) / group
        if layout.zero_stage == 0:
            out["dp"] += 2 * ring * count * e  # all-reduce of the gradients
        elif layout.zero_stage < 3:
            out["dp"] += 2 * ring * count * e  # reduce-scatter grads + all-gather weights
        else:
            out["dp"] += 3 * ring * count * e  # weights gathered twice + reduce-scatter
    per_stage = -(-m.num_layers // layout.pipeline)
    routed, experts = set(m.routed_layer_ids), set(m.moe_layer_ids)
    tokens = layout.micro_batch * seq
    for i in range(per_stage):
        t = layout.micro_batch * tokens_per_row(m.mod.capacity, seq) if i in routed else tokens
        width = t * m.hidden_size * e
        # Two all-reduces forward (attention, MLP) and two backward; under sequence
        # parallelism each is an all-gather + a reduce-scatter, the same ring bytes.
        out["tp"] += micro_batches * 4 * 2 * (layout.tensor - 1) / layout.tensor * width
        if i in experts and layout.expert > 1:
            slots = m.moe.top_k * m.moe.capacity_factor
            out["ep"] += micro_batches * 4 * (layout.expert - 1) / layout.expert * width * slots
    if layout.pipeline > 1:
        out["pp"] = micro_batches * 2 * tokens * m.hidden_size * e
    return out


@dataclass(frozen=True)
class Links:
    """Bandwidth of one GPU's links, GB/s in each direction, and GPUs sharing a node.
    Defaults: an H100 SXM node (NVLink 4: 450 GB/s a direction) and one 400 Gb/s
    InfiniBand NIC a GPU (50 GB/s)."""

    intra_node_gbps: float = 450.0
    inter_node_gbps: float = 50.0
    gpus_per_node: int = 8

    def seconds(self, nbytes: float, ranks_spanned: int) -> float:
        """Time to send `nbytes` over a group whose ranks lie within `ranks_spanned`
        consecutive ranks (one node or more)."""
        within = ranks_spanned <= self.gpus_per_node
        return nbytes / (1e9 * (self.intra_node_gbps if within else self.inter_node_gbps))


def comm_seconds(m: ModelConfig, layout: Layout, seq: int, global_batch: int,
                 links: Links) -> dict[str, float]:
    """Transfer time of each kind of traffic. Rank order as megatron-core's (TP fastest,
    then EP within DP, then DP, PP slowest): a TP group spans TP ranks, an EP group
    TP x EP, a DP group TP x DP, and a pipeline hop TP x DP x PP."""
    sent = comm_bytes(m, layout, seq, global_batch)
    t, d, p = layout.tensor, layout.data, layout.pipeline
    return {"tp": links.seconds(sent["tp"], t),
            "ep": links.seconds(sent["ep"], t * layout.expert),
            "dp": links.seconds(sent["dp"], t * d),
            "pp": links.seconds(sent["pp"], t * d * p)}


def exposed_comm_seconds(m: ModelConfig, layout: Layout, comm: dict[str, float],
                         backward_s: float) -> float:
    """The part of the communication the step waits for. TP (all-reduce, or all-gather +
    reduce-scatter under sequence parallelism), EP all-to-all and PP sends sit on the
    critical path (no TP comm overlap, 1F1B sends blocking): all exposed. The DP gradient
    reduction (and ZeRO's gathers) runs bucket by bucket during backward: exposed is the
    last bucket, taken as the largest layer's share of the gradients, plus whatever does
    not fit in the backward time."""
    params = rank_params(m, layout)
    last = params.largest_layer / max(1, params.total)
    dp = comm["dp"]
    hidden = min(dp * (1 - last), backward_s)
    return comm["tp"] + comm["ep"] + comm["pp"] + dp - hidden


@dataclass(frozen=True)
class StepTime:
    seconds: float
    tokens_per_s: float
    bubble: float
    flops_per_step: float
    compute_s: float = 0.0
    comm_s: float = 0.0  # exposed communication, part of `seconds`


def recompute_flops(m: ModelConfig, layout: Layout, seq: int) -> float:
    """Extra forward FLOPs a sequence costs under train.recompute: full reruns every
    block's forward; selective the core attention (its 2 T^2 d score and context
    matmuls; RoPE and the SwiGLU activation are elementwise)."""
    if layout.recompute == "full":
        return training_flops_per_token(m, seq) * seq / 3
    if layout.recompute != "selective":
        return 0.0
    routed = set(m.routed_layer_ids)
    total = 0.0
    for i in range(m.num_layers):
        t = tokens_per_row(m.mod.capacity, seq) if i in routed else seq
        total += 2 * t * t * m.hidden_size
    return total


def step_time(m: ModelConfig, layout: Layout, seq: int, global_batch: int,
              peak_tflops: float, mfu: float, links: Links | None = None) -> StepTime:
    """Analytic FLOPs (plus what recomputation reruns) / (GPUs x peak x MFU), stretched
    by the pipeline bubble, plus the exposed communication (`links`; None: none)."""
    tokens = global_batch * seq
    flops = training_flops_per_token(m, seq) * tokens
    work = flops + recompute_flops(m, layout, seq) * global_batch
    compute = work / (layout.gpus * peak_tflops * 1e12 * mfu)
    bubble = bubble_fraction(layout.pipeline, global_batch // (layout.data * layout.micro_batch))
    compute /= 1 - bubble
    comm = 0.0
    if links is not None:
        comm = exposed_comm_seconds(m, layout, comm_seconds(m, layout, seq, global_batch, links),
                                    backward_s=compute * 2 / 3)
    seconds = compute + comm
    return StepTime(seconds, tokens / seconds, bubble, flops, compute, comm)


def convert_host_bytes(m: ModelConfig) -> int:
    """Host memory `modtrain convert` needs for `m` (Slurm's --mem for its job). It streams
    the weights (inference/export.py): the largest tensor merged in fp32, its split parts
    and their cast (4 copies of it at most), beside page cache for the memory-mapped
    checkpoint and the export being written (one fp32 copy of the weights, so the writes
    are not throttled), and 2 GiB for Python, torch and the checkpoint metadata."""
    sizes = [_numel(row_of(name).shape(m)) * 4 for name in gpt_parameter_names(m)]
    return 2 * 2**30 + sum(sizes) + 4 * max(sizes)
