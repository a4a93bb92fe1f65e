"""A Mixture-of-Depths decoder in plain torch: the model of a modtrain export.

This file ships inside every MoD export (modeling_modtrain.py wraps it for Hugging Face)
and is what `modtrain generate` runs, so both run the same code. It imports torch only.

Parameter names follow Llama (`model.layers.N.self_attn.q_proj`, `mlp.gate_proj`, ...); a
routed layer adds `router.proj` (r = w^T x) and optionally `router.predictor`
(Linear-SiLU-Linear). A dense export is a Llama checkpoint and loads here too.

Routing (Raposo et al. 2024), per routed layer and batch row:
- "topk": the k = ceil(capacity * T) highest-r tokens of the row, in sequence order, ties
  to the lowest positions. Not causal: for scoring whole sequences exactly as in training.
- "causal": a per-token decision (predictor logit > 0, or r > 0, i.e. sigmoid(r) > 0.5),
  usable token by token.
Router scores, the predictor and the top-k run in fp32 whatever the model's dtype, as in
training (in bf16, neighbouring scores at the top-k cut are about one ulp apart).
A selected token becomes x + r * f(x), where f (attention + MLP) sees only the selected
tokens, at their absolute RoPE positions; other tokens pass unchanged. With a cache, a
skipped token writes no key/value, so routed layers store only their routed tokens.

Batched decoding: rows route independently, so a routed layer's cache is ragged (LayerKV:
a padded buffer with a length per row). At each step the tokens routed in a layer, across
the whole batch, run the block as one compact batch of just those rows, attending to their
own rows' entries; a layer where no row routes runs nothing. A routed layer's cost thus
follows the number of tokens it routes, not the batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .modtrain_experts import MoEMLP

ROUTINGS = ("topk", "causal")


@dataclass
class CoreConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    rope_linear_factor: float = 1.0  # "linear" rope scaling: inverse frequencies / factor
    tie_word_embeddings: bool = True
    mod_routed_layers: list[int] = field(default_factory=list)
    mod_capacity: float = 0.125
    mod_predictor_hidden: int = 0  # 0: no predictor
    mod_inference_routing: str = "predictor"  # "predictor" or "router"
    moe_layers: list[int] = field(default_factory=list)  # layers whose MLP holds experts
    moe_num_experts: int = 0
    moe_noop_experts: int = 0
    moe_top_k: int = 1
    moe_intermediate_size: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CoreConfig:
        """From a config.json dict (Llama keys, plus mod_* keys for a MoD model)."""
        heads = d["num_attention_heads"]
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        linear = rope.get("rope_type", rope.get("type")) == "linear"
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d["rms_norm_eps"],
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            max_position_embeddings=d["max_position_embeddings"],
            rope_linear_factor=float(rope["factor"]) if linear else 1.0,
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            mod_routed_layers=list(d.get("mod_routed_layers") or []),
            mod_capacity=d.get("mod_capacity", 0.125),
            mod_predictor_hidden=d.get("mod_predictor_hidden", 0),
            mod_inference_routing=d.get("mod_inference_routing", "predictor"),
            moe_layers=list(d.get("moe_layers") or []),
            moe_num_experts=d.get("moe_num_experts", 0),
            moe_noop_experts=d.get("moe_noop_experts", 0),
            moe_top_k=d.get("moe_top_k", 1),
            moe_intermediate_size=d.get("moe_intermediate_size", 0),
        )


def tokens_per_row(capacity: float, seq_length: int) -> int:
    """k = ceil(capacity * T), as in training."""
    return max(1, min(seq_length, math.ceil(capacity * seq_length - 1e-9)))


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the weights' dtype (as Llama does).
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class Rotary:
    """RoPE in the non-interleaved (rotate-half) layout of megatron-core and Llama."""

    def __init__(self, head_dim: int, theta: float, linear_factor: float = 1.0) -> None:
        self.head_dim, self.theta, self.linear_factor = head_dim, theta, linear_factor
        self._inv_freq: torch.Tensor | None = None  # not a buffer: no state to load

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, 1, T, head_dim] in fp32."""
        if self._inv_freq is None or self._inv_freq.device != positions.device:
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
            inv_freq = 1.0 / (self.theta**exponent)
            if self.linear_factor != 1.0:  # position interpolation, after the powers (fp32)
                inv_freq /= self.linear_factor
            self._inv_freq = inv_freq.to(positions.device)
        angles = positions[..., None].float() * self._inv_freq
        emb = torch.cat((angles, angles), dim=-1)[:, None]
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class LayerKV:
    """Keys and values one layer has stored: a padded [batch, heads, capacity, head_dim]
    buffer with a length per row.

    Rows hold different numbers of entries: in a routed layer each row stores only the
    tokens it routed. Keys are stored after RoPE, at their tokens' absolute positions. The
    lengths live on the host (Python ints), so deciding what to write and what to attend to
    needs no device round trip. Storage grows by doubling, so a routed layer allocates about
    what its longest row uses.
    """

    def __init__(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, capacity: int = 0) -> None:
        shape = (batch, heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.row_lengths = [0] * batch

    @property
    def lens(self) -> torch.Tensor:
        """Entries stored per row: [batch]."""
        return torch.tensor(self.row_lengths, dtype=torch.long)

    def _reserve(self, needed: int) -> None:
        cap = self.k.shape[2]
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap, 16)
        grow = (*self.k.shape[:2], new_cap - cap, self.k.shape[3])
        zeros = torch.zeros(grow, dtype=self.k.dtype, device=self.k.device)
        self.k = torch.cat((self.k, zeros), dim=2)
        self.v = torch.cat((self.v, zeros), dim=2)

    def append(
        self, k: torch.Tensor, v: torch.Tensor, rows: list[int] | None = None,
        counts: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Store k, v ([n, heads, T, D]) for batch rows `rows` (ascending; None: every row)
        and return what the new queries attend to: (keys, values, boolean mask or None,
        is_causal), batched over the n rows.

        Row i's first counts[i] entries are real tokens (None: all T); the rest is padding,
        written past the row's end where the next real entry overwrites it.
        """
        t = k.shape[2]
        rows = list(range(self.k.shape[0])) if rows is None else rows
        old = [self.row_lengths[r] for r in rows]
        new = [o + t for o in old] if counts is None else [o + c for o, c in zip(old, counts)]
        self._reserve(max(old) + t)
        self._write(k, v, rows, old)
        for r, n in zip(rows, new):
            self.row_lengths[r] = n
        length = max(new)
        keys, values = self._rows(rows, length, k.device)
        if max(old) == 0:  # nothing before: plain causal attention over the new entries
            return keys, values, None, t > 1
        if t == 1 and min(old) == max(old):  # one query per row that sees every entry
            return keys, values, None, False
        # Query i of a row sees the row's old entries and new entries 0..i.
        limit = torch.tensor(old, device=k.device)[:, None] + torch.arange(t, device=k.device)
        mask = torch.arange(length, device=k.device) <= limit[..., None]  # [n, T, length]
        return keys, values, mask[:, None], False

    def _write(self, k: torch.Tensor, v: torch.Tensor, rows: list[int], old: list[int]) -> None:
        t = k.shape[2]
        first = _contiguous_start(rows)
        if first is not None and min(old) == max(old):  # one block: slice assignment
            block = (slice(first, first + len(rows)), slice(None), slice(old[0], old[0] + t))
            self.k[block], self.v[block] = k, v
            return
        row_index = torch.tensor(rows, device=k.device)[:, None]
        slots = torch.tensor(old, device=k.device)[:, None] + torch.arange(t, device=k.device)
        self.k[row_index, :, slots] = k.transpose(1, 2)
        self.v[row_index, :, slots] = v.transpose(1, 2)

    def _rows(self, rows: list[int], length: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `length` entries of `rows`: views when the rows are adjacent, else one
        copy of just those rows."""
        keys, values = self.k[:, :, :length], self.v[:, :, :length]
        first = _contiguous_start(rows)
        if first is not None:
            return keys[first : first + len(rows)], values[first : first + len(rows)]
        index = torch.tensor(rows, device=device)
        return keys.index_select(0, index), values.index_select(0, index)

    def used_bytes(self) -> int:
        per_entry = 2 * self.k.shape[1] * self.k.shape[3] * self.k.element_size()
        return sum(self.row_lengths) * per_entry

    def allocated_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def _contiguous_start(rows: list[int]) -> int | None:
    """The first row if `rows` (ascending) are adjacent, else None."""
    return rows[0] if rows[-1] - rows[0] == len(rows) - 1 else None


class DecoderCache:
    """Per-layer key/value caches of a batch and the number of positions seen."""

    def __init__(self, config: CoreConfig, batch: int, dtype: torch.dtype,
                 device: torch.device | str, max_length: int = 0) -> None:
        routed = set(config.mod_routed_layers)
        # Dense layers store every position: allocate them once. Routed ones grow on demand.
        self.layers = [
            LayerKV(batch, config.num_key_value_heads, config.head_dim, dtype, device,
                    0 if i in routed else max_length)
            for i in range(config.num_hidden_layers)
        ]
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions processed so far (the name Hugging Face's generate expects)."""
        return self.seen

    def lengths(self) -> torch.Tensor:
        """Entries stored per layer and row: [layers, batch]."""
        return torch.stack([layer.lens for layer in self.layers])

    def used_bytes(self) -> int:
        return sum(layer.used_bytes() for layer in self.layers)

    def allocated_bytes(self) -> int:
        return sum(layer.allocated_bytes() for layer in self.layers)


class Attention(nn.Module):
    def __init__(self, config: CoreConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.heads, self.kv_heads, self.head_dim = (config.num_attention_heads,
                                                    config.num_key_value_heads, d)
        self.q_proj = nn.Linear(h, self.heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.heads * d, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv: LayerKV | None, rows: list[int] | None,
                counts: list[int] | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Without a cache, tokens are a valid prefix per row (padding last), so causal
        # attention is exact for every real token.
        mask, causal = None, t > 1
        if kv is not None:
            k, v, mask, causal = kv.append(k, v, rows, counts)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: CoreConfig) -> None:
        super().__init__()
        h, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def fp32_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) computed in fp32 (input and weights upcast), whatever their dtype."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class FP32MLP(nn.Sequential):
    """Linear-SiLU-Linear (the causal predictor) computed in fp32 whatever its dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, act, last = self
        return fp32_linear(act(fp32_linear(x, first)), last)


def topk_indices(r: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k highest scores of r [B, T] as positions [B, k] in sequence order; ties
    go to the lowest positions (a stable sort; torch.topk leaves their order unspecified)."""
    order = torch.sort(r.float(), dim=1, descending=True, stable=True).indices[:, :k]
    return order.sort(dim=1).values


class Router(nn.Module):
    def __init__(self, config: CoreConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, 1, bias=False)
        self.predictor: nn.Module | None = None
        if config.mod_predictor_hidden:
            self.predictor = FP32MLP(
                nn.Linear(config.hidden_size, config.mod_predictor_hidden),
                nn.SiLU(),
                nn.Linear(config.mod_predictor_hidden, 1),
            )
        self.use_predictor = config.mod_inference_routing == "predictor"

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """r = w^T x as fp32 [B, T]."""
        return fp32_linear(x, self.proj).squeeze(-1)

    def causal_mask(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The per-token decision [B, T]: predictor logit > 0, else sigmoid(r) > 0.5."""
        if self.use_predictor and self.predictor is not None:
            return self.predictor(x).squeeze(-1) > 0
        return r > 0


class DecoderLayer(nn.Module):
    def __init__(self, config: CoreConfig, routed: bool, experts: bool = False) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = (MoEMLP(config.hidden_size, config.moe_intermediate_size,
                           config.moe_num_experts, config.moe_noop_experts, config.moe_top_k)
                    if experts else MLP(config))
        self.router = Router(config) if routed else None
        self.capacity = config.mod_capacity

    def delta(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              kv: LayerKV | None, rows: list[int] | None = None,
              counts: list[int] | None = None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        """f(x) = attn + mlp of a pre-norm block; `valid` marks real tokens among padding."""
        attn = self.self_attn(self.input_layernorm(x), cos, sin, kv, rows, counts)
        h = x + attn
        if valid is None:
            return attn + self.mlp(self.post_attention_layernorm(h))
        mlp = torch.zeros_like(h)  # padding runs no MLP
        mlp[valid] = self.mlp(self.post_attention_layernorm(h[valid]))
        return attn + mlp

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv: LayerKV | None = None, routing: str = "topk") -> torch.Tensor:
        """x [B, T, H]; cos, sin [1, 1, T, head_dim], shared by the rows (equal lengths)."""
        if self.router is None:
            return x + self.delta(x, cos, sin, kv)
        r = self.router.scores(x)  # fp32 [B, T]
        if routing == "causal" and x.shape[1] == 1:
            return self._route_one_token(x, r, cos, sin, kv)
        if routing == "topk":
            if kv is not None:
                raise ValueError("top-k routing is not causal and cannot use a cache; "
                                 "use routing='causal'")
            k = tokens_per_row(self.capacity, x.shape[1])
            index = topk_indices(r, k)
            return self._update_selected(x, r, cos, sin, kv, index)
        if routing != "causal":
            raise ValueError(f"routing must be one of {ROUTINGS}, not {routing!r}")
        chosen = self.router.causal_mask(x, r)
        counts = chosen.sum(dim=1)
        rows = (counts > 0).nonzero().squeeze(1)
        if len(rows) == 0:
            return x  # nothing routed in any row: no compute, no cache writes
        if len(rows) == x.shape[0]:
            return self._update_selected(x, r, cos, sin, kv, self._chosen_first(chosen, counts),
                                         counts.tolist())
        # Rows that route nothing this time run nothing and store nothing.
        counts = counts.index_select(0, rows)
        index = self._chosen_first(chosen.index_select(0, rows), counts)
        out = self._update_selected(x.index_select(0, rows), r.index_select(0, rows), cos, sin,
                                    kv, index, counts.tolist(), rows.tolist())
        return x.index_copy(0, rows, out)

    @staticmethod
    def _chosen_first(chosen: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Each row's chosen positions first, in sequence order (a stable sort), cut to the
        longest row's count: [rows, most]."""
        most = int(counts.max())
        return torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices[:, :most]

    def _update_selected(self, x: torch.Tensor, r: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, kv: LayerKV | None, index: torch.Tensor,
                         counts: list[int] | None = None, rows: list[int] | None = None
                         ) -> torch.Tensor:
        """x + r * f(x) at the positions `index` [b, k] of each row of x, the rest unchanged.
        counts: real positions per row (the rest of `index` is padding); rows: the batch rows
        x holds (for the cache). cos and sin are shared by all rows: [1, 1, T, head_dim]."""
        valid = None
        if counts is not None and min(counts) < index.shape[1]:
            valid = torch.arange(index.shape[1], device=x.device) < torch.tensor(
                counts, device=x.device)[:, None]
        gather = index[..., None].expand(-1, -1, x.shape[-1])
        x_sel = x.gather(1, gather)
        pos = index[:, None, :, None].expand(-1, 1, -1, cos.shape[-1])
        cos, sin = (c.expand(index.shape[0], -1, -1, -1).gather(2, pos) for c in (cos, sin))
        delta = self.delta(x_sel, cos, sin, kv, rows, counts, valid)
        update = x_sel + (r.gather(1, index)[..., None] * delta).to(x.dtype)
        if valid is not None:  # padding slots point at unselected tokens: write them back as is
            update = torch.where(valid[..., None], update, x_sel)
        return x.scatter(1, gather, update)

    def _route_one_token(self, x: torch.Tensor, r: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, kv: LayerKV | None) -> torch.Tensor:
        """Causal routing of one new token per row (decoding). The rows that route it run
        the block as one compact batch of those rows alone, against their own cache entries;
        the other rows run nothing and store nothing."""
        assert self.router is not None  # only routed blocks decode through here
        chosen = self.router.causal_mask(x, r)[:, 0]
        rows = chosen.nonzero().squeeze(1)
        n = len(rows)
        if n == 0:
            return x
        if n == x.shape[0]:
            return x + (r[..., None] * self.delta(x, cos, sin, kv)).to(x.dtype)
        x_sel = x.index_select(0, rows)
        delta = self.delta(x_sel, cos, sin, kv, rows.tolist())
        update = x_sel + (r.index_select(0, rows)[..., None] * delta).to(x.dtype)
        return x.index_copy(0, rows, update)


class ModtrainDecoder(nn.Module):
    """Embeddings, decoder layers and the final norm (the `model.` part of the names)."""

    def __init__(self, config: CoreConfig) -> None:
        super().__init__()
        self.config = config
        routed = set(config.mod_routed_layers)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i in routed, i in config.moe_layers)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.rope_linear_factor)

    def forward(self, input_ids: torch.Tensor, routing: str = "topk",
                cache: DecoderCache | None = None) -> torch.Tensor:
        """input_ids [B, T] -> final hidden states [B, T, H]. With a cache, the tokens
        continue the cached ones (positions start at cache.seen) and routing must be causal."""
        b, t = input_ids.shape
        start = 0 if cache is None else cache.seen
        # Rows are equally long, so they share positions: cos, sin [1, 1, T, head_dim].
        cos, sin = self.rotary(torch.arange(start, start + t, device=input_ids.device)[None])
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if cache is None else cache.layers[i], routing)
        if cache is not None:
            cache.seen += t
        return self.norm(x)


class ModtrainLM(nn.Module):
    """Decoder plus output head; the head shares the embedding when tie_word_embeddings."""

    def __init__(self, config: CoreConfig) -> None:
        super().__init__()
        self.config = config
        self.model = ModtrainDecoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, routing: str = "topk",
                cache: DecoderCache | None = None, last_only: bool = False) -> torch.Tensor:
        hidden = self.model(input_ids, routing, cache)
        return self.lm_head(hidden[:, -1:] if last_only else hidden)

    def new_cache(self, batch: int, max_length: int = 0) -> DecoderCache:
        weight = self.model.embed_tokens.weight
        return DecoderCache(self.config, batch, weight.dtype, weight.device, max_length)
