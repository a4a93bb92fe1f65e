"""A plain single-file PyTorch GPT trainer: the reference modtrain's training step is timed against.

    python benchmarks/reference_gpt.py CONFIG [key=value ...] [--json OUT] [--compile]
    torchrun --nproc_per_node 2 benchmarks/reference_gpt.py CONFIG ...   (DDP over gloo)

The same model and recipe as modtrain's dense GPT, written the nanoGPT way: RMSNorm, RoPE
(non-interleaved halves), SwiGLU MLP, no biases, tied embeddings, SDPA causal attention,
AdamW on matrices with weight decay, gradient clipping, linear warm-up then cosine decay,
fp32. It reads the same batches (modtrain's data reader, from the same config) and logs
like modtrain: tokens/s over each window of train.log_interval steps. No modtrain model or
training code is used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modtrain.config import load_config  # noqa: E402
from modtrain.data.read.loading import build_training_data, open_sources  # noqa: E402
from modtrain.data.tokenizer import Tokenizer  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_angles(seq: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)  # [S, head_dim]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class SwiGLU(nn.Module):
    def __init__(self, width: int, ffn: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * value)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(width, eps), RMSNorm(width, eps)
        self.attn = Attention(width, heads)
        self.mlp = SwiGLU(width, ffn)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab: int, layers: int, width: int, heads: int, ffn: int, seq: int,
                 rope_base: float = 10000.0, eps: float = 1e-5, std: float = 0.02,
                 padded_vocab: int = 0) -> None:
        """`padded_vocab`: embedding rows (>= vocab); padded ids never win the softmax."""
        super().__init__()
        self.vocab = vocab
        self.rows = max(vocab, padded_vocab)
        self.embed = nn.Embedding(self.rows, width)
        self.blocks = nn.ModuleList(Block(width, heads, ffn, eps) for _ in range(layers))
        self.norm = RMSNorm(width, eps)
        cos, sin = rope_angles(seq, width // heads, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for name, p in self.named_parameters():  # GPT-2 init, residual outputs depth-scaled
            if p.dim() == 2:
                residual = name.endswith(("proj.weight", "down.weight"))
                nn.init.normal_(p, std=std / math.sqrt(2 * layers) if residual else std)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        cos, sin = self.cos[:s], self.sin[:s]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.norm(x) @ self.embed.weight.t()  # tied output projection
        if self.rows > self.vocab:
            logits[..., self.vocab:] = float("-inf")
        return F.cross_entropy(logits.view(-1, self.rows), labels.reshape(-1))


def lr_at(step: int, lr: float, min_lr: float, warmup: int, end: int) -> float:
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, end - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def reference_optimizer(model: nn.Module, t) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; torch's fused kernel, as modtrain uses it
    (on a CPU 3-6x the per-parameter loop)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json", help="write per-window tokens/s and losses here (rank 0)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--idle-gloo-groups", type=int, default=0, metavar="N",
                        help="first create N unused gloo process groups (what megatron-core's "
                             "parallel state creates in a training process), to time their cost")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    elif args.idle_gloo_groups:  # one process: an in-memory store, no port to pick
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    idle_groups = [dist.new_group(list(range(world))) for _ in range(args.idle_gloo_groups)]
    config = load_config(args.config, args.overrides)
    m, t = config.model, config.train
    sources = open_sources(config)
    m.vocab_size = m.vocab_size or Tokenizer(config.data.tokenizer).vocab_size
    loader, _ = build_training_data(config, sources, rank, world, log=lambda _: None)

    torch.manual_seed(config.run.seed)
    model = ReferenceGPT(m.vocab_size, m.num_layers, m.hidden_size, m.num_heads, m.ffn_size,
                         config.data.seq_length, m.rope_base, m.norm_eps, m.init_std,
                         m.padded_vocab_size)
    params = sum(p.numel() for p in model.parameters())
    optimizer = reference_optimizer(model, t)
    train_model = torch.compile(model) if args.compile else model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(train_model)

    tokens_per_step = t.global_batch_size * config.data.seq_length
    records = []
    window_start = time.perf_counter()
    for step in range(1, t.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1, t.lr, t.min_lr, t.warmup_steps, t.decay_steps or t.steps)
        micro_batches = loader.next_step()
        for i, batch in enumerate(micro_batches):
            rows = torch.from_numpy(batch)
            x, y = rows[:, :-1], rows[:, 1:]
            if world > 1 and i < len(micro_batches) - 1:
                with train_model.no_sync():
                    loss = train_model(x, y)
                    (loss / len(micro_batches)).backward()
            else:
                loss = train_model(x, y)
                (loss / len(micro_batches)).backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % t.log_interval == 0 or step == t.steps:
            now = time.perf_counter()
            window_steps = step - (records[-1]["step"] if records else 0)
            records.append({"step": step, "loss": loss.item(),
                            "tokens_per_s": window_steps * tokens_per_step / (now - window_start)})
            window_start = time.perf_counter()
    if rank == 0:
        result = {"parameters": params, "world_size": world, "records": records}
        if args.json:
            Path(args.json).write_text(json.dumps(result))
        last = records[-1]
        print(f"reference: {params:,} parameters, world size {world}, step {last['step']} "
              f"loss {last['loss']:.4f}, {last['tokens_per_s']:,.0f} tokens/s")
    del idle_groups
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
