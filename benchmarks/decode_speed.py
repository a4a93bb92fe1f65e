"""Decode speed and key/value-cache memory of MoD vs dense models of equal dimensions.

    python benchmarks/decode_speed.py --mod EXPORT --dense EXPORT     # trained exports
    python benchmarks/decode_speed.py --sizes 512x8,1024x8            # random weights

Each row is greedy KV-cached sampling (`modtrain generate`'s code path) of --new-tokens
tokens after a --prompt-len token prompt, batch 1 and 8: decode tokens/s counts every
generated token after the first (the prompt's prefill excluded; context-window restarts,
which re-prefill half a window, included), the best of --repeats runs. Cache memory is
the largest footprint during the run: `used` = bytes of stored keys/values, `allocated`
= buffers (dense layers allocate the window at once, routed layers grow by doubling).

Trained exports route as they would when sampling (their causal routing). Random-weight
models cannot learn a routing rate, so their routed layers route each token with
probability --routed-fraction (default: the capacity, 0.125), drawn at random.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from routing_counter import count_causal_decisions

from modtrain.inference.export import load_export
from modtrain.inference.generate import generate_ids
from modtrain.inference.hf_template.modtrain_core import CoreConfig, ModtrainLM


@dataclass
class Row:
    model: str
    batch: int
    tokens_per_s: float
    used: int
    allocated: int
    routed: float | None  # fraction of (row, token) decisions routed, over routed layers


def _random_routing(model: ModtrainLM, fraction: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        if layer.router is not None:
            layer.router.causal_mask = lambda x, r: torch.rand(r.shape, generator=g) < fraction


def _run(model: ModtrainLM, prompt: torch.Tensor, new_tokens: int) -> tuple[float, object]:
    result = generate_ids(model, prompt, new_tokens)
    decode_s = result.seconds - result.prefill_seconds
    return prompt.shape[0] * (result.new_tokens - 1) / decode_s, result


def measure_pair(dense: ModtrainLM, mod: ModtrainLM, batch: int, prompt_len: int,
                 new_tokens: int, repeats: int) -> tuple[Row, Row]:
    """Best of `repeats` for each model, dense and MoD runs interleaved so that load from
    other processes hits both alike."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, dense.config.vocab_size, (batch, prompt_len), generator=g)
    best = {"dense": 0.0, "mod": 0.0}
    results = {}
    for model in (dense, mod):
        generate_ids(model, prompt, 4)  # warm-up: first-call allocations and kernel choices
    for _ in range(repeats):
        for name, model in (("dense", dense), ("mod", mod)):
            speed, results[name] = _run(model, prompt, new_tokens)
            best[name] = max(best[name], speed)
    counts, undo = count_causal_decisions(mod)  # counted in a separate, untimed run
    generate_ids(mod, prompt, new_tokens)
    undo()
    routed = counts[0] / counts[1] if counts[1] else None
    return tuple(Row(name, batch, best[name], results[name].cache_used_bytes,
                     results[name].cache_allocated_bytes, routed if name == "mod" else None)
                 for name in ("dense", "mod"))


def synthetic(hidden: int, layers: int, routed: bool, window: int, vocab: int) -> ModtrainLM:
    heads = max(1, hidden // 64)
    config = CoreConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=-(-hidden * 8 // 3 // 32) * 32,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        head_dim=hidden // heads, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=window,
        mod_routed_layers=list(range(1, layers, 2)) if routed else [],
        mod_capacity=0.125, mod_predictor_hidden=0, mod_inference_routing="router",
    )
    torch.manual_seed(0)
    return ModtrainLM(config).eval()


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f}"


def print_table(pairs: list[tuple[str, Row, Row]]) -> None:
    print("| model | batch | dense tok/s | MoD tok/s | MoD / dense | MoD routed | "
          "KV used KiB dense / MoD | KV allocated KiB dense / MoD |")
    print("|---|---|---|---|---|---|---|---|")
    for label, dense, mod in pairs:
        routed = "-" if mod.routed is None else f"{mod.routed:.1%}"
        print(f"| {label} | {dense.batch} | {dense.tokens_per_s:,.0f} | {mod.tokens_per_s:,.0f} "
              f"| {mod.tokens_per_s / dense.tokens_per_s:.2f}x | {routed} | "
              f"{_kib(dense.used)} / {_kib(mod.used)} | "
              f"{_kib(dense.allocated)} / {_kib(mod.allocated)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mod", help="MoD export (modtrain convert)")
    p.add_argument("--dense", help="dense export of equal dimensions")
    p.add_argument("--sizes", default="", help="random-weight models, HIDDENxLAYERS,...")
    p.add_argument("--window", type=int, default=1024, help="context of random-weight models")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary of random-weight models")
    p.add_argument("--routed-fraction", type=float, default=0.125)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    pairs = []
    if args.mod and args.dense:
        mod, dense = load_export(args.mod), load_export(args.dense)
        c = mod.config
        label = f"trained {c.hidden_size}x{c.num_hidden_layers}, window {c.max_position_embeddings}"
        for b in batches:
            pairs.append((label, *measure_pair(dense, mod, b, args.prompt_len,
                                               args.new_tokens, args.repeats)))
    for size in filter(None, args.sizes.split(",")):
        hidden, layers = (int(v) for v in size.split("x"))
        dense = synthetic(hidden, layers, False, args.window, args.vocab)
        mod = synthetic(hidden, layers, True, args.window, args.vocab)
        mod.load_state_dict(dense.state_dict(), strict=False)  # same weights where shared
        for b in batches:
            _random_routing(mod, args.routed_fraction, seed=b)
            pairs.append((f"random {hidden}x{layers}",
                          *measure_pair(dense, mod, b, args.prompt_len, args.new_tokens,
                                        args.repeats)))
    if not pairs:
        p.error("give --mod and --dense exports, or --sizes")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, fp32, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print_table(pairs)


if __name__ == "__main__":
    main()
