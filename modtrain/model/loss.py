"""The language-model loss from the last hidden states: the padded-vocabulary mask, the full
cross-entropy over [tokens, V] logits, and a chunked one that never holds them whole."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int, vocab_start: int) -> torch.Tensor:
    """-inf for padded vocabulary ids in this rank's vocabulary shard ([..., V/tp] logits)."""
    shard = logits.shape[-1]
    if vocab_start + shard <= vocab_size:
        return logits
    ids = torch.arange(vocab_start, vocab_start + shard, device=logits.device)
    return logits.masked_fill(ids >= vocab_size, float("-inf"))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, tensor_size: int = 1) -> torch.Tensor:
    """Mean cross-entropy; logits [S, B, V/tp] (vocabulary-parallel), labels [B, S]."""
    labels = labels.transpose(0, 1)
    if tensor_size == 1:  # the whole vocabulary here: torch's fused kernel, no collectives
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
    per_token = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels.contiguous())
    return per_token.mean()


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softmax(hidden @ weightᵀ) over the whole vocabulary, a chunk of
    tokens at a time. The gradients are computed chunk by chunk in forward (the fp32 logits
    of a chunk are freed before the next), so backward only scales them: neither pass holds
    [tokens, V] logits, and the head matmul is not recomputed."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                vocab_size: int, chunk: int) -> torch.Tensor:
        tokens = hidden.shape[0]
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        # Accumulated over chunks in fp32 at least; cast to the weight's dtype once at the end.
        accumulate = torch.promote_types(weight.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=accumulate,
                                  device=weight.device) if want_weight else None
        for start in range(0, tokens, chunk):
            h, y = hidden[start:start + chunk], labels[start:start + chunk]
            logits = mask_padded_vocab(F.linear(h, weight), vocab_size, 0).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            # d mean / d logits = (softmax - onehot) / tokens, in place on the chunk's logits.
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, y[:, None], torch.full_like(lse[:, None], -1.0))
            grad = grad.div_(tokens).to(hidden.dtype)  # the dtype the head's backward uses
            if grad_hidden is not None:
                grad_hidden[start:start + chunk] = grad @ weight
            if grad_weight is not None:
                grad_weight += grad.t() @ h
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / tokens

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        dh = None if grad_hidden is None else grad_hidden * grad_loss.to(grad_hidden.dtype)
        dw = None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype)
        return dh, dw, None, None, None


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                    vocab_size: int, chunk_tokens: int) -> torch.Tensor:
    """`lm_loss` of the (masked) head logits, hidden [S, B, H] @ weight [V, H]ᵀ, computed
    `chunk_tokens` tokens at a time: the fp32 [S·B, V] logits never exist whole."""
    return _ChunkedHeadCrossEntropy.apply(
        hidden.flatten(0, 1), weight, labels.transpose(0, 1).flatten(), vocab_size,
        chunk_tokens)
