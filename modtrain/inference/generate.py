"""Autoregressive sampling from an export; routed layers use the causal routing decision.

This version recomputes the whole context each step (no KV cache).
"""

from __future__ import annotations

from pathlib import Path

import torch

from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError
from modtrain.inference.export import load_export
from modtrain.model import GPT


def load_model(export_dir: str | Path) -> GPT:
    model_config, tensors = load_export(export_dir)
    model = GPT(model_config)
    tensors = {k: v.float() for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ModtrainError(
            f"export {export_dir} does not match the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return model.eval()


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop tokens once the cumulative probability before them exceeds top_p.
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def generate_ids(
    model: GPT,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """prompt: [B, T] ids. Greedy when temperature == 0."""
    routing = "causal" if model.config.mod.enabled else "topk"
    ids = prompt
    for _ in range(max_new_tokens):
        context = ids[:, -model.config.max_seq_length :]
        logits = model(context, routing=routing).logits[:, -1, :].float()
        if temperature == 0.0:
            next_id = logits.argmax(-1, keepdim=True)
        else:
            logits = _filter_logits(logits / temperature, top_k, top_p)
            next_id = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def generate_text(
    export_dir: str | Path,
    prompt: str,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    tokenizer = Tokenizer(Path(export_dir) / "tokenizer.model")
    model = load_model(export_dir)
    ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    prompt_ids = torch.tensor([ids] * num_samples, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    out = generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, generator)
    return [tokenizer.decode(row.tolist()) for row in out]
