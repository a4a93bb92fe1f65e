"""Typed configuration: one dataclass per section, validated after loading."""

from __future__ import annotations

import math
import typing
from collections import Counter
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

from modtrain.errors import ModtrainError, shown


def tokens_per_row(capacity: float, seq_length: int) -> int:
    """k = ceil(capacity * S) tokens a routed block takes from a row of S, fixed a priori so
    shapes and compute are static (the model, the FLOP and cost formulas, and the checks
    here all use this one)."""
    return max(1, min(seq_length, math.ceil(capacity * seq_length - 1e-9)))

@dataclass
class MoDConfig:
    """Mixture-of-Depths routing (Raposo et al. 2024)."""

    enabled: bool = False  # route blocks with Mixture-of-Depths
    # Fraction of the sequence each routed block processes: k = ceil(capacity * S).
    capacity: float = 0.125
    # 0-based indices of routed layers; None means every other block, starting at block 1.
    routed_layers: list[int] | None = None
    # Causal-routing aid (A): BCE of router logits against top-k membership.
    router_bce_coef: float = 0.01
    # Causal-routing aid (B): a stop-gradient MLP that predicts top-k membership.
    predictor: bool = True
    predictor_hidden: int = 64  # width of the predictor MLP
    predictor_loss_coef: float = 1.0  # weight of the predictor's BCE (its input is detached)
    # Which decision sampling uses: "predictor" or "router" (sigmoid(r) > 0.5).
    inference_routing: Literal["predictor", "router"] = "predictor"


@dataclass
class MoEConfig:
    """Mixture-of-Experts MLPs (DeepSpeed's MoE layer) and, with no-op experts, integrated
    MoDE (Raposo et al. 2024, section 3.6). docs/moe.md"""

    enabled: bool = False  # replace the MLP of the expert layers with a Mixture-of-Experts
    num_experts: int = 4  # MLP experts per expert layer (a multiple of parallel.expert)
    # Integrated MoDE: identity ("no-op") experts in the same gate; a token that picks one
    # skips the MLP and is never sent to another rank. 0: a plain MoE.
    noop_experts: int = 0
    top_k: int = 1  # experts per token: 1 (Switch) or 2 (GShard)
    # Per-expert capacity C = ceil(top_k * tokens / (num_experts + noop_experts) * factor):
    # the same on every rank, so every rank does the same routed work.
    capacity_factor: float = 1.25
    eval_capacity_factor: float = 2.0  # the factor in evaluation
    min_capacity: int = 4  # capacity is never below this
    # Drop tokens past an expert's capacity (static shapes); false: capacity grows to the
    # largest expert load in the expert-parallel group (shapes vary from step to step).
    drop_tokens: bool = True
    balance_loss_coef: float = 0.01  # load-balancing loss (Switch/GShard form)
    z_loss_coef: float = 0.001  # router z-loss (ST-MoE): mean logsumexp(gate logits)^2
    layers: Literal["all", "every_other"] = "all"  # blocks with experts (every_other: 1, 3, ..)
    ffn_hidden_size: int = 0  # width of each expert's SwiGLU; 0: the model's ffn size


@dataclass
class RopeScalingConfig:
    """RoPE scaling, for a model that continues at a longer context than it was trained on
    (resume with a larger model.max_seq_length). docs/long_context.md"""

    # none | linear (position interpolation: every angle divided by factor) | ntk (NTK-aware:
    # rope_base times factor^(D/(D-2)), D the head dimension; high frequencies barely move).
    type: Literal["none", "linear", "ntk"] = "none"
    factor: float = 1.0  # the context's growth over original_max_seq_length (>= 1)
    # The model.max_seq_length the model was trained at before scaling; 0: max_seq_length.
    # Sampling may use up to factor x this many positions.
    original_max_seq_length: int = 0

    def scaled_context(self, max_seq_length: int) -> int:
        """The positions a scaled model may use: factor x the original context (never less
        than the trained max_seq_length)."""
        original = self.original_max_seq_length or max_seq_length
        return max(max_seq_length, int(self.factor * original))


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0: taken from the data store
    # Embedding rows are padded to a multiple of this (must be divisible by parallel.tensor);
    # padded ids are masked out of the softmax, so padding never changes the loss.
    vocab_multiple: int = 1
    num_layers: int = 4  # decoder blocks
    hidden_size: int = 128  # model width d
    num_heads: int = 4  # attention heads; hidden_size must be a multiple
    ffn_hidden_size: int = 0  # 0: SwiGLU default, 8/3 * hidden rounded up to a multiple of 32
    max_seq_length: int = 64  # longest sequence the model takes (RoPE table size)
    rope_base: float = 10000.0  # RoPE theta
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    tie_embeddings: bool = True  # the output projection reuses the embedding matrix
    dropout: float = 0.0  # on attention probabilities and block outputs (0: off)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    init_std: float = 0.02  # std of the normal init; residual outputs / sqrt(2 num_layers)
    mod: MoDConfig = field(default_factory=MoDConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)

    @property
    def expert_ffn_size(self) -> int:
        return self.moe.ffn_hidden_size or self.ffn_size

    @property
    def moe_layer_ids(self) -> list[int]:
        if not self.moe.enabled:
            return []
        start = 1 if self.moe.layers == "every_other" else 0
        step = 2 if self.moe.layers == "every_other" else 1
        return list(range(start, self.num_layers, step))

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden_size:
            return self.ffn_hidden_size
        return int(math.ceil(self.hidden_size * 8 / 3 / 32) * 32)

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def routed_layer_ids(self) -> list[int]:
        if not self.mod.enabled:
            return []
        if self.mod.routed_layers is None:
            return list(range(1, self.num_layers, 2))
        return sorted(self.mod.routed_layers)


@dataclass
class DataConfig:
    store: str = "data/shakespeare_char.zarr"  # token store written by modtrain data prepare
    tokenizer: str = "data/shakespeare_char.model"  # the store's SentencePiece model (hash-checked)
    seq_length: int = 64  # tokens per training sample (<= model.max_seq_length)
    val_fraction: float = 0.1  # held-out tail of the token stream, for validation
    # Blend several stores (same tokenizer); when set, `store` is not used.
    stores: list[str] = field(default_factory=list)
    # Sampling weight of each of `stores`; empty: in proportion to their sizes. A schedule:
    # [{until: STEP, weights: [...]}, ..., {weights: [...]}], each phase up to its step.
    weights: list[float | dict] = field(default_factory=list)
    # Directory for the cached sample index; "": beside each store (STORE.zarr.index/).
    index_cache: str = ""
    # Attention within each document only: a row packs several documents (each ends with
    # EOS); a token attends to earlier tokens of its own document, MoD blocks included.
    # Needs parallel.pipeline=1. docs/data_format.md
    document_mask: bool = False
    # RoPE positions restart at 0 at each document start (after each EOS) within a row.
    reset_positions: bool = False
    # Read the next step's batch in a background thread while this step computes (pinned
    # on CUDA); the batches and the resumed position are the same either way.
    prefetch: bool = True


@dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps
    global_batch_size: int = 12  # sequences per optimizer step, over all data-parallel ranks
    # Samples per rank per forward pass; 0: global_batch_size / data-parallel size (one
    # micro-batch per step, no gradient accumulation), so a config runs on any process count.
    micro_batch_size: int = 0
    lr: float = 1e-3  # peak learning rate, reached after warm-up
    min_lr: float = 1e-4  # learning rate at the end of the decay
    warmup_steps: int = 100  # linear warm-up from 0 to train.lr
    # After warm-up: cosine | linear (decay to min_lr) | constant | wsd (warm-up, stable at
    # lr, then decay). docs/schedules.md
    schedule: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    decay_steps: int = 0  # the decay ends here (0: at train.steps); lets a run stop early
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"  # wsd's decay
    decay_start: int = 0  # wsd: the step its decay begins (0: from decay_fraction)
    decay_fraction: float = 0.2  # wsd with decay_start=0: the schedule's last share decays
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only, not norms)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: off)
    eval_interval: int = 250  # steps between validation evaluations (and at the end)
    eval_batches: int = 20  # validation batches per evaluation
    log_interval: int = 10  # steps between metrics.jsonl records
    save_interval: int = 1000  # steps between checkpoints (and at the end)
    keep_last: int = 3  # complete checkpoints kept (0: all)
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: off)
    # Consecutive steps with a non-finite loss (each skipped) before training stops.
    max_nonfinite_steps: int = 5
    # Loss-spike skipping (0: off): a step whose loss, or gradient norm where modtrain clips,
    # is more than spike_zscore standard deviations above the mean of the last spike_window
    # applied steps is skipped (no update); spike_max_skips of them within spike_window steps
    # stop the run. Needs parallel.pipeline=1 (the pipeline engine updates inside its step).
    spike_window: int = 0
    spike_zscore: float = 6.0  # standard deviations above the window's mean that skip a step
    spike_max_skips: int = 3  # skips within spike_window steps that stop the run
    # Routing-collapse warning (0: off): a routed layer whose router or predictor accuracy
    # against the top-k, averaged over this many steps, is no better than always answering
    # the majority (1 - capacity for capacity < 0.5) plus routing_collapse_margin is named.
    routing_collapse_window: int = 100
    routing_collapse_margin: float = 0.02  # accuracy above the majority answer that is healthy
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # of weights, activations, gradients
    # bf16: accumulate gradients over micro-batches and reduce them across data-parallel
    # ranks in fp32 (false: in bf16, half the traffic, less exact); docs/gpu.md.
    fp32_reduce: bool = True
    # Peak TFLOP/s of one device, for MFU in metrics.jsonl; 0: known GPUs' dense bf16 peak
    # (H100/H200 989), no MFU on others.
    peak_tflops: float = 0.0
    zero_stage: int = 1  # DeepSpeed ZeRO stage 0-3 (pipeline: 0 or 1)
    # Compile each decoder block with torch.compile (Inductor); docs/benchmarks_training.md.
    compile: bool = False
    # Compute the loss this many tokens at a time so the fp32 [tokens, vocab] logits never
    # exist whole (0: all at once). Tensor parallelism keeps the vocabulary-parallel loss.
    loss_chunk_tokens: int = 0
    # none | selective | full: in backward, full reruns each chosen block's attention and
    # MLP from its input; selective keeps the matmul outputs and reruns core attention
    # (RoPE, softmax) and the MLP activation (a routed block reruns its k routed tokens).
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_layers: str | list[int] = "all"  # with recompute: all | every_N | [0-based ids]
    # Optional DeepSpeed JSON (e.g. launch/ds_zero2.json) merged over the derived config.
    deepspeed_config: str | None = None

    def recompute_layer_ids(self, num_layers: int) -> list[int]:
        """The blocks that recompute (train.recompute, train.recompute_layers)."""
        if self.recompute == "none":
            return []
        layers = self.recompute_layers
        if isinstance(layers, list):
            return sorted(set(layers))
        if layers == "all":
            return list(range(num_layers))
        step = layers.removeprefix("every_")
        if not (layers.startswith("every_") and step.isdigit() and int(step) > 0):
            raise ModtrainError(f"train.recompute_layers={layers!r}; use all, every_N (N >= 1, "
                                "blocks 0, N, 2N, ...) or a list of block indices")
        return list(range(0, num_layers, int(step)))

    @property
    def schedule_end(self) -> int:
        """The step at which the decay reaches min_lr."""
        return self.decay_steps or self.steps

    @property
    def wsd_decay_start(self) -> int:
        """The first step of schedule=wsd's decay."""
        end = self.schedule_end
        return self.decay_start or end - round(self.decay_fraction * end)

    def micro_batch(self, data_parallel_size: int) -> int:
        """The micro-batch on `data_parallel_size` ranks (micro_batch_size, or derived)."""
        if self.micro_batch_size:
            per_step = self.micro_batch_size * data_parallel_size
            if self.global_batch_size % per_step:
                raise ModtrainError(
                    f"train.global_batch_size={self.global_batch_size} is not divisible by "
                    f"train.micro_batch_size x data-parallel size = {self.micro_batch_size} x "
                    f"{data_parallel_size}; set train.micro_batch_size=0 (derived) or change "
                    "the batch sizes or the number of processes"
                )
            return self.micro_batch_size
        if self.global_batch_size % data_parallel_size:
            raise ModtrainError(
                f"train.global_batch_size={self.global_batch_size} is not divisible by the "
                f"data-parallel size {data_parallel_size}; choose a global batch that is a "
                "multiple of it, or another number of processes"
            )
        return self.global_batch_size // data_parallel_size


@dataclass
class ParallelConfig:
    tensor: int = 1  # tensor-parallel size (megatron-core layers)
    pipeline: int = 1  # pipeline stages (DeepSpeed pipeline engine)
    # Expert-parallel size: each group of this many data-parallel ranks splits the experts of
    # every expert layer between them (model.moe); it divides the data-parallel size.
    expert: int = 1
    # Sequence parallelism (needs tensor > 1): norms, residuals, dropout and MoD routing run
    # on each tensor rank's 1/tensor of the sequence (top-k still over the whole row), so
    # those activations take 1/tensor of the memory. docs/parallelism.md
    sequence_parallel: bool = False
    # A collective (torch, DeepSpeed, megatron-core groups) waiting this long fails, not hangs.
    timeout_minutes: int = 30


@dataclass
class RunConfig:
    dir: str = "runs/default"  # where config.yaml, metrics.jsonl, tensorboard/ and checkpoints/ go
    seed: int = 1337  # weights (the same on every layout), data order and dropout
    resume: Literal["none", "auto"] = "none"  # auto: continue from the latest checkpoint
    # With resume=auto: the checkpoint (RUN/checkpoints/step_N, or RUN/checkpoints for its
    # latest) a new run.dir starts from, e.g. a WSD anneal branch. docs/schedules.md
    init_from: str = ""
    # resume=auto and `latest` fails its checksums: resume from the newest older checkpoint
    # that verifies (true) or stop (false). docs/fault_tolerance.md
    resume_fallback: bool = True
    # TensorBoard event files in RUN_DIR/tensorboard/ beside metrics.jsonl (when the
    # tensorboard package is installed: pip install modtrain[tensorboard]).
    tensorboard: bool = True
    # A Weights & Biases run in offline mode in RUN_DIR/wandb/ (pip install modtrain[wandb]);
    # upload it later with `wandb sync`.
    wandb: bool = False
    wandb_project: str = "modtrain"  # the W&B project the offline run belongs to


# Sizes that must be at least 1 (the others are counts that may be 0, see their comments).
POSITIVE = ("model.num_layers", "model.hidden_size", "model.num_heads", "model.max_seq_length",
            "model.mod.predictor_hidden", "train.eval_batches", "model.moe.num_experts",
            "parallel.expert", "parallel.timeout_minutes")
NON_NEGATIVE = ("model.vocab_size", "model.ffn_hidden_size", "train.warmup_steps",
                "train.decay_steps", "train.decay_start", "train.peak_tflops",
                "model.moe.noop_experts", "train.routing_collapse_window",
                "model.moe.min_capacity", "model.moe.ffn_hidden_size",
                "model.moe.balance_loss_coef", "model.moe.z_loss_coef")
# Floats that pass as numbers but fail or train nonsense outside these ranges.
RANGES = {"train.lr": "(0, inf)", "train.min_lr": "[0, inf)", "train.eps": "(0, inf)",
          "train.beta1": "[0, 1)", "train.beta2": "[0, 1)", "train.weight_decay": "[0, inf)",
          "train.grad_clip": "[0, inf)", "model.dropout": "[0, 1)", "model.init_std": "(0, inf)",
          "model.rope_base": "(0, inf)", "model.norm_eps": "(0, inf)",
          "model.mod.router_bce_coef": "[0, inf)", "model.mod.predictor_loss_coef": "[0, inf)",
          "model.moe.balance_loss_coef": "[0, inf)", "model.moe.z_loss_coef": "[0, inf)",
          "train.routing_collapse_margin": "[0, 1)"}


def _inside(v: float, interval: str) -> bool:
    low, high = (float(x) for x in interval[1:-1].split(","))
    return ((low <= v) if interval[0] == "[" else (low < v)) and \
        ((v <= high) if interval[-1] == "]" else (v < high))


def check_choices(node: Any, prefix: str = "") -> None:
    """Every field typed Literal[...] holds one of its values (the loader checks them as it
    reads; this catches values set in code)."""
    hints = typing.get_type_hints(type(node))
    for f in fields(node):
        value, hint = getattr(node, f.name), hints[f.name]
        if is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
        elif typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            raise ModtrainError(choice_error(f"{prefix}{f.name}", value, typing.get_args(hint)))


def choice_error(key: str, value: Any, allowed: tuple[Any, ...]) -> str:
    return f"{key}={shown(value)}; use {' | '.join(map(str, allowed))}"


def _check_numbers(config: Config) -> None:
    """Every float finite, every size in range: later arithmetic never divides by zero."""
    def value(key: str):
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def walk(node, prefix: str) -> None:
        for f in fields(node):
            v = getattr(node, f.name)
            if is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            elif isinstance(v, float) and not math.isfinite(v):
                raise ModtrainError(f"{prefix}{f.name}={v} is not a finite number")

    walk(config, "")
    for key in POSITIVE:
        if value(key) < 1:
            raise ModtrainError(f"{key}={value(key)} must be at least 1")
    for key in NON_NEGATIVE:
        if value(key) < 0:
            raise ModtrainError(f"{key}={value(key)} must be 0 or more (0: derived)"
                                if key in ("model.vocab_size", "model.ffn_hidden_size")
                                else f"{key}={value(key)} must be 0 or more")
    for key, interval in RANGES.items():
        if not _inside(value(key), interval):
            raise ModtrainError(f"{key}={value(key)} is outside {interval}; set it within "
                                "that range")


def _check_experts(config: Config) -> None:
    """model.moe and parallel.expert: values, and the layouts DeepSpeed's MoE layer supports
    (docs/moe.md has the table)."""
    moe, par, t = config.model.moe, config.parallel, config.train
    if moe.top_k not in (1, 2):
        raise ModtrainError(f"model.moe.top_k={moe.top_k}; use 1 or 2")
    if moe.top_k > moe.num_experts + moe.noop_experts:
        raise ModtrainError(
            f"model.moe.top_k={moe.top_k} exceeds the number of experts "
            f"({moe.num_experts} + {moe.noop_experts} no-op); lower top_k or add experts")
    for name in ("capacity_factor", "eval_capacity_factor"):
        if getattr(moe, name) <= 0:
            raise ModtrainError(f"model.moe.{name}={getattr(moe, name)} must be positive")
    if not moe.enabled:
        if par.expert > 1:
            raise ModtrainError(
                f"parallel.expert={par.expert} needs experts; set model.moe.enabled=true or "
                "parallel.expert=1")
        return
    if moe.num_experts % par.expert:
        raise ModtrainError(
            f"model.moe.num_experts={moe.num_experts} is not divisible by parallel.expert="
            f"{par.expert}; every expert-parallel rank holds the same number of experts")
    if par.tensor > 1 or par.pipeline > 1:
        raise ModtrainError(
            "model.moe works with data and expert parallelism (parallel.expert) and ZeRO 0-2, "
            f"not with parallel.tensor={par.tensor} or parallel.pipeline={par.pipeline}; set "
            "both to 1 and spread the experts with parallel.expert instead (docs/moe.md)")
    if t.zero_stage == 3:
        raise ModtrainError(
            "model.moe does not work with train.zero_stage=3 (DeepSpeed's MoE layer supports "
            "ZeRO 0-2); use train.zero_stage=2, which also partitions the expert optimizer "
            "state over the expert data-parallel group")


def _check_sequence_parallel(config: Config) -> None:
    """parallel.sequence_parallel: the layouts it runs on and sequences that split evenly."""
    par, m, seq = config.parallel, config.model, config.data.seq_length
    if not par.sequence_parallel:
        return
    if par.tensor < 2:
        raise ModtrainError(
            f"parallel.sequence_parallel=true needs parallel.tensor > 1 (it splits the sequence "
            f"over the tensor-parallel ranks), not {par.tensor}; set parallel.tensor=2 or more, "
            "or parallel.sequence_parallel=false")
    if par.pipeline > 1:
        raise ModtrainError(
            f"parallel.sequence_parallel=true does not work with parallel.pipeline="
            f"{par.pipeline} (pipeline stages pass whole sequences); set parallel.pipeline=1 "
            "or parallel.sequence_parallel=false")
    if config.data.document_mask or config.data.reset_positions:
        raise ModtrainError(
            "parallel.sequence_parallel=true does not work with data.document_mask or "
            "data.reset_positions yet (each rank would need its shard's documents and the "
            "whole row's mask); set them false or parallel.sequence_parallel=false")
    if seq % par.tensor:
        raise ModtrainError(
            f"data.seq_length={seq} is not divisible by parallel.tensor={par.tensor}; sequence "
            "parallelism splits every sequence evenly, so choose a multiple of it")
    routed = tokens_per_row(m.mod.capacity, seq)  # the routed tokens split too
    if m.routed_layer_ids and routed % par.tensor:
        raise ModtrainError(
            f"model.mod.capacity={m.mod.capacity} routes {routed} of data.seq_length={seq} "
            f"tokens, not divisible by parallel.tensor={par.tensor}; sequence parallelism "
            "splits the routed tokens evenly, so choose a capacity (or sequence length) whose "
            "ceil(capacity x seq_length) is a multiple of it")


def _check_schedule(t: TrainConfig) -> None:
    """train.schedule and its keys: a decay that starts after warm-up and ends after it starts
    (train.lr and train.min_lr are checked with the other ranges: RANGES)."""
    if t.schedule != "wsd":
        return
    if not 0.0 < t.decay_fraction <= 1.0:
        raise ModtrainError(f"train.decay_fraction={t.decay_fraction} must be in (0, 1]")
    end, start = t.schedule_end, t.wsd_decay_start
    if not t.warmup_steps <= start < end:
        raise ModtrainError(
            f"train.schedule=wsd decays from step {start} (train.decay_start, or "
            f"train.decay_fraction of the schedule) to step {end} (train.decay_steps, or "
            f"train.steps): the decay must start at or after train.warmup_steps="
            f"{t.warmup_steps} and before its end; change train.decay_start or train.steps")


def _check_rope_scaling(m: ModelConfig) -> None:
    """model.rope_scaling: a known type and a factor that stretches (>= 1)."""
    r = m.rope_scaling
    if r.type != "none" and r.factor < 1.0:
        raise ModtrainError(f"model.rope_scaling.factor={r.factor} must be at least 1 (the "
                            "context's growth over the original one)")
    if r.type == "ntk" and m.hidden_size // m.num_heads <= 2:
        raise ModtrainError(f"model.rope_scaling.type=ntk needs a head dimension above 2 (it "
                            f"is {m.hidden_size // m.num_heads}); use linear, or fewer heads")
    if r.original_max_seq_length < 0 or r.original_max_seq_length > m.max_seq_length:
        raise ModtrainError(
            f"model.rope_scaling.original_max_seq_length={r.original_max_seq_length} must be "
            f"between 0 and model.max_seq_length={m.max_seq_length} (the context the model "
            "was trained at before scaling; 0: model.max_seq_length)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def warnings(self) -> list[str]:
        """Settings that are valid but almost surely not meant, one line each with the fix.
        Training prints them at start (rank 0); nothing else changes."""
        t, found = self.train, []
        if t.steps <= t.warmup_steps:
            found.append(
                f"train.steps={t.steps} is not more than train.warmup_steps={t.warmup_steps}: "
                "the whole run is warm-up (the learning rate never reaches train.lr or decays); "
                f"set train.warmup_steps below {t.steps} or raise train.steps"
            )
        if t.precision == "bf16" and t.zero_stage == 0:
            found.append(
                "train.precision=bf16 with train.zero_stage=0 keeps master weights and "
                "accumulates gradients in bf16 (DeepSpeed's unfused fp16 optimizer; it has no "
                "fp32 accumulation without ZeRO); set train.zero_stage=1 for fp32 master weights "
                "and accumulation with the fused AdamW"
            )
        return found

    def validate(self) -> None:
        """Check cross-field constraints; raise ModtrainError naming the key and the fix."""
        m, t, d = self.model, self.train, self.data
        check_choices(self)
        _check_numbers(self)
        _check_experts(self)
        _check_model(m, d)
        _check_schedule(t)
        _check_sequence_parallel(self)
        _check_steps(self)
        _check_layout(self)


def _check_model(m: ModelConfig, d: DataConfig) -> None:
    """Shapes that fit together: heads, RoPE, the sequence, the routed layers."""
    if not 0.0 < m.mod.capacity <= 1.0:
        raise ModtrainError(
            f"model.mod.capacity={m.mod.capacity} is outside (0, 1]; "
            "set it to the fraction of tokens a routed block processes, e.g. 0.125"
        )
    if m.hidden_size % m.num_heads:
        raise ModtrainError(
            f"model.hidden_size={m.hidden_size} is not divisible by "
            f"model.num_heads={m.num_heads}; choose a head count that divides it"
        )
    if (m.hidden_size // m.num_heads) % 2:
        raise ModtrainError(
            "model head dimension must be even for RoPE; change model.num_heads"
        )
    _check_rope_scaling(m)
    if d.seq_length > m.max_seq_length:
        raise ModtrainError(
            f"data.seq_length={d.seq_length} is larger than the model's "
            f"model.max_seq_length={m.max_seq_length}; lower data.seq_length or raise "
            "model.max_seq_length"
        )
    if d.seq_length < 2:
        raise ModtrainError(f"data.seq_length={d.seq_length} must be at least 2")
    if not 0.0 < d.val_fraction < 1.0:
        raise ModtrainError(f"data.val_fraction={d.val_fraction} must be in (0, 1)")
    routed = m.mod.routed_layers or []
    if len(set(routed)) != len(routed):
        twice = sorted(i for i, n in Counter(routed).items() if n > 1)[:5]
        raise ModtrainError(f"model.mod.routed_layers lists layer(s) {twice} more than once; "
                            "list each routed layer once")
    for i in m.routed_layer_ids:
        if not 0 <= i < m.num_layers:
            raise ModtrainError(
                f"model.mod.routed_layers contains {i}, but the model has "
                f"{m.num_layers} layers (0..{m.num_layers - 1})"
            )
    if m.mod.inference_routing == "predictor" and m.mod.enabled and not m.mod.predictor:
        raise ModtrainError(
            "model.mod.inference_routing='predictor' needs model.mod.predictor=true; "
            "enable the predictor or route sampling with 'router'"
        )


def _check_steps(config: Config) -> None:
    """train.*: stages, step counts, batch sizes, spike skipping, retention."""
    m, t, d = config.model, config.train, config.data
    if t.zero_stage not in (0, 1, 2, 3):
        raise ModtrainError(f"train.zero_stage={t.zero_stage}; use 0, 1, 2 or 3")
    for i in t.recompute_layer_ids(m.num_layers):
        if not 0 <= i < m.num_layers:
            raise ModtrainError(f"train.recompute_layers contains {i}, but the model has "
                                f"{m.num_layers} layers (0..{m.num_layers - 1})")
    if t.loss_chunk_tokens < 0:
        raise ModtrainError(f"train.loss_chunk_tokens={t.loss_chunk_tokens}; use 0 (the "
                            "whole loss at once) or a positive number of tokens")
    for name in ("steps", "global_batch_size", "log_interval", "eval_interval",
                 "save_interval"):
        if getattr(t, name) <= 0:
            raise ModtrainError(f"train.{name} must be positive")
    if t.micro_batch_size < 0:
        raise ModtrainError("train.micro_batch_size must be positive, or 0 to derive it")
    if t.micro_batch_size and t.global_batch_size % t.micro_batch_size:
        raise ModtrainError(
            f"train.global_batch_size={t.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={t.micro_batch_size}"
        )
    if t.spike_window and (t.spike_window < 2 or t.spike_zscore <= 0
                           or t.spike_max_skips < 1):
        raise ModtrainError(
            f"train.spike_window={t.spike_window}, spike_zscore={t.spike_zscore}, "
            f"spike_max_skips={t.spike_max_skips}: use a window of at least 2 steps (0: "
            "off), a z-score above 0 and at least 1 skip")
    if t.spike_window and config.parallel.pipeline > 1:
        raise ModtrainError(
            "train.spike_window>0 needs parallel.pipeline=1 (DeepSpeed's pipeline engine "
            "applies the update inside its step, before a spike can be judged); set "
            "train.spike_window=0")
    if (d.document_mask or d.reset_positions) and config.parallel.pipeline > 1:
        raise ModtrainError(
            "data.document_mask and data.reset_positions need parallel.pipeline=1 (the "
            "pipeline stages pass hidden states only, not the documents); set both false "
            "or parallel.pipeline=1")
    if t.keep_last < 0 or t.keep_every < 0 or t.max_nonfinite_steps < 1:
        raise ModtrainError(
            "train.keep_last and train.keep_every must be >= 0 and "
            "train.max_nonfinite_steps >= 1"
        )


def _check_layout(config: Config) -> None:
    """parallel.*: what tensor and pipeline parallelism need of the model and of ZeRO."""
    m, t = config.model, config.train
    if config.parallel.tensor < 1 or config.parallel.pipeline < 1:
        raise ModtrainError("parallel.tensor and parallel.pipeline must be >= 1")
    if m.vocab_multiple < 1 or m.vocab_multiple % config.parallel.tensor:
        raise ModtrainError(
            f"model.vocab_multiple={m.vocab_multiple} is not a multiple of "
            f"parallel.tensor={config.parallel.tensor}; set model.vocab_multiple="
            f"{config.parallel.tensor * 64} (the vocabulary is split across tensor ranks)"
        )
    if config.parallel.pipeline > 1 and t.zero_stage > 1:
        raise ModtrainError(
            f"train.zero_stage={t.zero_stage} does not work with DeepSpeed's pipeline engine "
            "(parallel.pipeline > 1); use train.zero_stage=1"
        )
    if config.parallel.pipeline > 1 and t.zero_stage == 0 and t.grad_clip > 0:
        # Without ZeRO, DeepSpeed's pipeline engine clips each stage by a norm that misses
        # other stages' parameters (drifts from one process by 1.6e-4 in 4 steps).
        raise ModtrainError(
            "train.zero_stage=0 with train.grad_clip>0 clips by a wrong gradient norm under "
            "DeepSpeed's pipeline engine (parallel.pipeline > 1); use train.zero_stage=1"
        )
    tp = config.parallel.tensor
    for name, value in (("model.num_heads", m.num_heads), ("model.ffn_size", m.ffn_size)):
        if value % tp:
            raise ModtrainError(
                f"{name}={value} is not divisible by parallel.tensor={tp}; choose sizes "
                "that split evenly across tensor-parallel ranks"
            )
