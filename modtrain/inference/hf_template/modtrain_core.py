"""A Mixture-of-Depths decoder in plain torch: the model of a modtrain export.

This file ships inside every MoD export (modeling_modtrain.py wraps it for Hugging Face)
and is what `modtrain generate` runs, so both run the same code. It imports torch only.

Parameter names follow Llama (`model.layers.N.self_attn.q_proj`, `mlp.gate_proj`, ...); a
routed layer adds `router.proj` (r = w^T x) and optionally `router.predictor`
(Linear-SiLU-Linear). A dense export is a Llama checkpoint and loads here too.

Routing (Raposo et al. 2024), per routed layer and batch row:
- "topk": the k = ceil(capacity * T) highest-r tokens of the row, in sequence order. Not
  causal: for scoring whole sequences exactly as in training.
- "causal": a per-token decision (predictor logit > 0, or r > 0, i.e. sigmoid(r) > 0.5),
  usable token by token.
A selected token becomes x + r * f(x), where f (attention + MLP) sees only the selected
tokens, at their absolute RoPE positions; other tokens pass unchanged. With a cache, a
skipped token writes no key/value, so routed layers store only their routed tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
    tie_word_embeddings: bool = True
    mod_routed_layers: list[int] = field(default_factory=list)
    mod_capacity: float = 0.125
    mod_predictor_hidden: int = 0  # 0: no predictor
    mod_inference_routing: str = "predictor"  # "predictor" or "router"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CoreConfig:
        """From a config.json dict (Llama keys, plus mod_* keys for a MoD model)."""
        heads = d["num_attention_heads"]
        rope = d.get("rope_parameters") or {}
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
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            mod_routed_layers=list(d.get("mod_routed_layers") or []),
            mod_capacity=d.get("mod_capacity", 0.125),
            mod_predictor_hidden=d.get("mod_predictor_hidden", 0),
            mod_inference_routing=d.get("mod_inference_routing", "predictor"),
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

    def __init__(self, head_dim: int, theta: float) -> None:
        self.head_dim, self.theta = head_dim, theta
        self._inv_freq: torch.Tensor | None = None  # not a buffer: no state to load

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, 1, T, head_dim] in fp32."""
        if self._inv_freq is None or self._inv_freq.device != positions.device:
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
            self._inv_freq = (1.0 / (self.theta**exponent)).to(positions.device)
        angles = positions[..., None].float() * self._inv_freq
        emb = torch.cat((angles, angles), dim=-1)[:, None]
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class LayerKV:
    """Keys and values one layer has stored, per batch row.

    Rows may hold different numbers of entries: in a routed layer each row stores only the
    tokens it routed. Keys are stored after RoPE, at their tokens' absolute positions.
    Storage grows by doubling, so a routed layer allocates about what its rows use.
    """

    def __init__(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, capacity: int = 0) -> None:
        shape = (batch, heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lens = torch.zeros(batch, dtype=torch.long, device=device)
        self._uniform: int | None = 0  # the common length while every row has the same

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
        self, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None,
        counts: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Store k, v ([b, heads, T, D]) for `rows` (None: every row) and return what the new
        queries attend to: (keys, values, boolean mask or None, is_causal).

        Row i's first counts[i] entries are real tokens (None: all T); the rest is padding,
        written past the row's end where the next real entry overwrites it.
        """
        t = k.shape[2]
        if rows is None and counts is None and self._uniform is not None:
            return self._append_uniform(k, v)
        self._uniform = None
        old = self.lens if rows is None else self.lens[rows]
        new = old + (t if counts is None else counts)
        old_min, old_max, length = torch.stack((old.min(), old.max(), new.max())).tolist()
        self._reserve(old_max + t)
        row_index = (torch.arange(self.k.shape[0], device=k.device) if rows is None
                     else rows)[:, None]
        slots = old[:, None] + torch.arange(t, device=k.device)
        self.k[row_index, :, slots] = k.transpose(1, 2)
        self.v[row_index, :, slots] = v.transpose(1, 2)
        if rows is None:
            self.lens = new
            keys, values = self.k[:, :, :length], self.v[:, :, :length]
        else:
            self.lens[rows] = new
            keys, values = self.k[rows, :, :length], self.v[rows, :, :length]
        if old_max == 0:  # nothing before: plain causal attention over the new entries
            return keys, values, None, t > 1
        if t == 1 and old_min == old_max:  # one query per row that sees every stored entry
            return keys, values, None, False
        # Query i of a row sees the row's old entries and new entries 0..i.
        limit = old[:, None] + torch.arange(t, device=k.device)  # [b, T]
        mask = torch.arange(length, device=k.device) <= limit[..., None]
        return keys, values, mask[:, None], False

    def _append_uniform(self, k: torch.Tensor, v: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Every row stores all T entries at the same offset (dense layers): slices only."""
        n, t = self._uniform, k.shape[2]
        self._reserve(n + t)
        self.k[:, :, n : n + t] = k
        self.v[:, :, n : n + t] = v
        self.lens += t
        self._uniform = n + t
        keys, values = self.k[:, :, : n + t], self.v[:, :, : n + t]
        if n == 0 or t == 1:
            return keys, values, None, n == 0 and t > 1
        mask = torch.arange(n + t, device=k.device) <= n + torch.arange(t, device=k.device)[:, None]
        return keys, values, mask, False

    def used_bytes(self) -> int:
        per_entry = 2 * self.k.shape[1] * self.k.shape[3] * self.k.element_size()
        return int(self.lens.sum()) * per_entry

    def allocated_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


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
                kv: LayerKV | None, rows: torch.Tensor | None,
                counts: torch.Tensor | None) -> torch.Tensor:
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


class Router(nn.Module):
    def __init__(self, config: CoreConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, 1, bias=False)
        self.predictor: nn.Module | None = None
        if config.mod_predictor_hidden:
            self.predictor = nn.Sequential(
                nn.Linear(config.hidden_size, config.mod_predictor_hidden),
                nn.SiLU(),
                nn.Linear(config.mod_predictor_hidden, 1),
            )
        self.use_predictor = config.mod_inference_routing == "predictor"

    def causal_mask(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The per-token decision [B, T]: predictor logit > 0, else sigmoid(r) > 0.5."""
        if self.use_predictor and self.predictor is not None:
            return self.predictor(x).squeeze(-1) > 0
        return r > 0


class DecoderLayer(nn.Module):
    def __init__(self, config: CoreConfig, routed: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.router = Router(config) if routed else None
        self.capacity = config.mod_capacity

    def delta(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              kv: LayerKV | None, rows: torch.Tensor | None = None,
              counts: torch.Tensor | None = None,
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
        if self.router is None:
            return x + self.delta(x, cos, sin, kv)
        r = self.router.proj(x).squeeze(-1)  # [B, T]
        rows = counts = valid = None
        if routing == "topk":
            if kv is not None:
                raise ValueError("top-k routing is not causal and cannot use a cache; "
                                 "use routing='causal'")
            k = tokens_per_row(self.capacity, x.shape[1])
            index = torch.topk(r, k, dim=1, sorted=False).indices.sort(dim=1).values
        elif routing == "causal" and x.shape[1] == 1:
            return self._route_one_token(x, r, cos, sin, kv)
        elif routing == "causal":
            chosen = self.router.causal_mask(x, r)
            counts = chosen.sum(dim=1)
            most = int(counts.max())
            if most == 0:
                return x  # nothing routed in any row: no compute, no cache writes
            if not bool((counts > 0).all()):
                rows = (counts > 0).nonzero().squeeze(1)
                counts, chosen = counts[rows], chosen[rows]
            # Each row's chosen positions first, in sequence order (a stable sort).
            index = torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices[:, :most]
            valid = torch.arange(most, device=x.device) < counts[:, None]
            if bool(valid.all()):
                valid = None
        else:
            raise ValueError(f"routing must be one of {ROUTINGS}, not {routing!r}")
        xr, rr, cr, sr = (x, r, cos, sin) if rows is None else (x[rows], r[rows], cos[rows],
                                                                 sin[rows])
        gather = index[..., None].expand(-1, -1, x.shape[-1])
        x_sel = xr.gather(1, gather)
        pos = index[:, None, :, None].expand(-1, 1, -1, cr.shape[-1])
        delta = self.delta(x_sel, cr.gather(2, pos), sr.gather(2, pos), kv, rows, counts, valid)
        update = x_sel + rr.gather(1, index)[..., None].to(x.dtype) * delta
        if valid is not None:  # padding slots point at unselected tokens: write them back as is
            update = torch.where(valid[..., None], update, x_sel)
        out = xr.scatter(1, gather, update)
        if rows is None:
            return out
        full = x.clone()
        full[rows] = out
        return full


    def _route_one_token(self, x: torch.Tensor, r: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, kv: LayerKV | None) -> torch.Tensor:
        """Causal routing of one new token per row (decoding): only the rows that route it
        run the block; no gather/scatter along the sequence."""
        chosen = self.router.causal_mask(x, r)[:, 0]
        n = int(chosen.sum())
        if n == 0:
            return x
        ones = torch.ones(n, dtype=torch.long, device=x.device)
        if n == x.shape[0]:
            return x + r[..., None].to(x.dtype) * self.delta(x, cos, sin, kv, None, ones)
        rows = chosen.nonzero().squeeze(1)
        x_sel = x[rows]
        delta = self.delta(x_sel, cos[rows], sin[rows], kv, rows, ones)
        out = x.clone()
        out[rows] = x_sel + r[rows][..., None].to(x.dtype) * delta
        return out


class ModtrainDecoder(nn.Module):
    """Embeddings, decoder layers and the final norm (the `model.` part of the names)."""

    def __init__(self, config: CoreConfig) -> None:
        super().__init__()
        self.config = config
        routed = set(config.mod_routed_layers)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i in routed) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta)

    def forward(self, input_ids: torch.Tensor, routing: str = "topk",
                cache: DecoderCache | None = None) -> torch.Tensor:
        """input_ids [B, T] -> final hidden states [B, T, H]. With a cache, the tokens
        continue the cached ones (positions start at cache.seen) and routing must be causal."""
        b, t = input_ids.shape
        start = 0 if cache is None else cache.seen
        positions = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        cos, sin = self.rotary(positions)
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
