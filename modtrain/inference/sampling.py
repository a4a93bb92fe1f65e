"""Next-token choice from logits: greedy, temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modtrain.errors import ModtrainError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no limit

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ModtrainError(f"--temperature {self.temperature} is negative; use 0 (greedy) "
                                "or a positive value")
        if self.top_k < 0:
            raise ModtrainError(f"--top-k {self.top_k} is negative; use 0 (off) or a count")
        if not 0.0 < self.top_p <= 1.0:
            raise ModtrainError(f"--top-p {self.top_p} is outside (0, 1]; use 1 to turn it off")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / top-p set to -inf ([B, V])."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose probability reaches top_p (at least one token).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def next_tokens(logits: torch.Tensor, sampling: Sampling,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B, 1]."""
    logits = logits.float()
    if sampling.temperature == 0.0:
        return logits.argmax(-1, keepdim=True)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
