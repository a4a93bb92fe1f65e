"""Decode speed and key/value-cache memory of MoD vs dense models of equal dimensions.

    python benchmarks/decode_speed.py --mod EXPORT --dense EXPORT     # trained exports
    python benchmarks/decode_speed.py --sizes 512x8,1024x8            # random weights

Each row is greedy KV-cached sampling (`modtrain generate`'s code path) of --new-tokens
tokens after a --prompt-len token prompt, at each of --batches (default 1 and 8): decode
tokens/s counts every generated token after the first over all rows (the prompt's prefill
excluded; context-window restarts, which re-prefill half a window, included).

Dense and MoD runs alternate back to back (dense first in even repeats, MoD first in odd
ones), so load from other processes hits both alike; each tokens/s is the median of
--repeats runs and MoD / dense is the median of the per-repeat ratios, from wall-clock
time and, in a second column, from the process's processor time (which leaves out the time
other processes held the cores; on a shared machine the steadier of the two). One torch
thread unless --threads says otherwise, the same for both models. Cache memory is the largest
footprint during a run: `used` = bytes of stored keys/values, `allocated` = buffers (dense
layers allocate the window at once, routed layers grow by doubling).

Trained exports route as they would when sampling (their causal routing). Random-weight
models cannot learn a routing rate, so their routed layers (every other layer) route each
token with probability --routed-fraction (default: the capacity, 0.125), drawn at random.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from routing_counter import count_causal_decisions

from modtrain.inference.export import load_export
from modtrain.inference.generate import Generation, generate_ids
from modtrain.inference.hf_template.modtrain_core import CoreConfig, ModtrainLM


@dataclass
class Pair:
    model: str
    batch: int
    dense_tokens_per_s: float  # median over repeats
    mod_tokens_per_s: float
    ratio: float  # median of the per-repeat MoD / dense ratios
    ratios: list[float]  # every repeat's, to show the spread
    cpu_ratio: float  # the same from processor time (leaves out other processes' turns)
    dense_used_bytes: int
    mod_used_bytes: int
    dense_allocated_bytes: int
    mod_allocated_bytes: int
    routed: float | None  # fraction of (row, token) decisions routed, over routed layers


def _random_routing(model: ModtrainLM, fraction: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        if layer.router is not None:
            layer.router.causal_mask = lambda x, r: torch.rand(r.shape, generator=g) < fraction


def _decode_speed(result: Generation, batch: int, cpu: bool = False) -> float:
    seconds = (result.cpu_seconds - result.prefill_cpu_seconds if cpu
               else result.seconds - result.prefill_seconds)
    return batch * (result.new_tokens - 1) / seconds


def measure_pair(label: str, dense: ModtrainLM, mod: ModtrainLM, batch: int, prompt_len: int,
                 new_tokens: int, repeats: int) -> Pair:
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, dense.config.vocab_size, (batch, prompt_len), generator=g)
    for model in (dense, mod):
        generate_ids(model, prompt, 4)  # warm-up: first-call allocations and kernel choices
    speeds: dict[str, list[float]] = {"dense": [], "mod": []}
    cpu_speeds: dict[str, list[float]] = {"dense": [], "mod": []}
    results: dict[str, Generation] = {}
    for repeat in range(repeats):
        order = (("dense", dense), ("mod", mod))
        for name, model in order if repeat % 2 == 0 else order[::-1]:
            results[name] = generate_ids(model, prompt, new_tokens)
            speeds[name].append(_decode_speed(results[name], batch))
            cpu_speeds[name].append(_decode_speed(results[name], batch, cpu=True))
    counts, undo = count_causal_decisions(mod)  # counted in a separate, untimed run
    generate_ids(mod, prompt, new_tokens)
    undo()
    ratios = [m / d for d, m in zip(speeds["dense"], speeds["mod"])]
    cpu_ratios = [m / d for d, m in zip(cpu_speeds["dense"], cpu_speeds["mod"])]
    return Pair(label, batch, statistics.median(speeds["dense"]),
                statistics.median(speeds["mod"]), statistics.median(ratios), ratios,
                statistics.median(cpu_ratios),
                results["dense"].cache_used_bytes, results["mod"].cache_used_bytes,
                results["dense"].cache_allocated_bytes, results["mod"].cache_allocated_bytes,
                counts[0] / counts[1] if counts[1] else None)


@torch.no_grad()
def block_costs(model: ModtrainLM, batch: int, context: int, repeats: int) -> dict[str, float]:
    """Processor milliseconds of one decode step through one layer after `context` tokens:
    a dense layer over the whole batch, and a routed layer when n of the batch rows route
    the token (n = 0 .. batch; the rows drawn at random). Median of `repeats` groups of 10,
    the cases taking turns."""
    kinds = [layer.router is not None for layer in model.model.layers]
    dense_at, routed_at = kinds.index(False), kinds.index(True)
    cache = model.new_cache(batch, max_length=context + 10)
    model(torch.randint(2, model.config.vocab_size, (batch, context)), "causal", cache)
    x = torch.randn(batch, 1, model.config.hidden_size)
    cos, sin = model.model.rotary(torch.tensor([[context]]))
    g = torch.Generator().manual_seed(0)
    routed = model.model.layers[routed_at]
    decide = routed.router.causal_mask
    choices: dict[str, tuple[int, torch.Tensor | None]] = {"dense layer": (dense_at, None)}
    for n in range(batch + 1):
        chosen = torch.zeros(batch, 1, dtype=torch.bool)
        chosen[torch.randperm(batch, generator=g)[:n]] = True
        choices[f"routed, {n} of {batch} rows"] = (routed_at, chosen)
    times: dict[str, list[float]] = {name: [] for name in choices}
    for _ in range(repeats):  # every case once per repeat: load hits them alike
        for name, (at, chosen) in choices.items():
            routed.router.causal_mask = lambda x, r, chosen=chosen: chosen
            kv = cache.layers[at]
            lengths = list(kv.row_lengths)
            start = time.process_time()
            for _ in range(10):
                model.model.layers[at](x, cos, sin, kv, "causal")
            times[name].append((time.process_time() - start) / 10 * 1e3)
            kv.row_lengths = lengths  # back to `context` tokens seen: what is past is unused
    routed.router.causal_mask = decide
    return {name: statistics.median(t) for name, t in times.items()}


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


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{len(names)} x {names[0]}"
    except (OSError, IndexError):
        return platform.machine()


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f}"


def print_table(pairs: list[Pair]) -> None:
    print("| model | batch | dense tok/s | MoD tok/s | MoD / dense (min-max) | by CPU time | "
          "MoD routed | KV used KiB dense / MoD | KV allocated KiB dense / MoD |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in pairs:
        routed = "-" if p.routed is None else f"{p.routed:.1%}"
        print(f"| {p.model} | {p.batch} | {p.dense_tokens_per_s:,.0f} | "
              f"{p.mod_tokens_per_s:,.0f} | {p.ratio:.2f}x ({min(p.ratios):.2f}-"
              f"{max(p.ratios):.2f}) | {p.cpu_ratio:.2f}x | {routed} | "
              f"{_kib(p.dense_used_bytes)} / "
              f"{_kib(p.mod_used_bytes)} | {_kib(p.dense_allocated_bytes)} / "
              f"{_kib(p.mod_allocated_bytes)} |")


def _print_block_costs(sizes: str, batch: int, context: int, repeats: int, window: int,
                       vocab: int, fraction: float) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, context {context}, "
          f"fp32, processor ms per layer and step, median of {repeats}, {_processor()}\n")
    for size in filter(None, sizes.split(",")):
        print("| model | layer | ms | / dense layer |")
        print("|---|---|---|---|")
        hidden, layers = (int(v) for v in size.split("x"))
        model = synthetic(hidden, layers, True, window, vocab)
        _random_routing(model, fraction, seed=0)  # the prefill's routed entries
        costs = block_costs(model, batch, context, repeats)
        for name, ms in costs.items():
            print(f"| random {size} | {name} | {ms:.3f} | {ms / costs['dense layer']:.2f} |")
        # Rows route independently: n of the batch route with a binomial probability.
        expected = sum(math.comb(batch, n) * fraction**n * (1 - fraction) ** (batch - n)
                       * costs[f"routed, {n} of {batch} rows"] for n in range(batch + 1))
        share = expected / costs["dense layer"]
        routed = len(range(1, layers, 2))
        print(f"| random {size} | routed, expected at {fraction:g} per row | {expected:.3f} | "
              f"{share:.2f} |")
        implied = layers / (layers - routed + routed * share)
        print(f"\nrandom {size}: MoD / dense decode speed implied by these layer costs "
              f"(embedding and head left out): {implied:.2f}x\n")


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
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads, for both models")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--block-costs", action="store_true",
                   help="instead: per-layer decode-step cost of each --sizes model, dense vs "
                        "routed by the number of routing rows, at the largest of --batches")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    if args.block_costs:
        _print_block_costs(args.sizes, max(batches), args.prompt_len + args.new_tokens // 2,
                           args.repeats, args.window, args.vocab, args.routed_fraction)
        return

    pairs = []
    if args.mod and args.dense:
        mod, dense = load_export(args.mod), load_export(args.dense)
        c = mod.config
        label = f"trained {c.hidden_size}x{c.num_hidden_layers}, window {c.max_position_embeddings}"
        for b in batches:
            pairs.append(measure_pair(label, dense, mod, b, args.prompt_len, args.new_tokens,
                                      args.repeats))
    for size in filter(None, args.sizes.split(",")):
        hidden, layers = (int(v) for v in size.split("x"))
        dense = synthetic(hidden, layers, False, args.window, args.vocab)
        mod = synthetic(hidden, layers, True, args.window, args.vocab)
        mod.load_state_dict(dense.state_dict(), strict=False)  # same weights where shared
        for b in batches:
            _random_routing(mod, args.routed_fraction, seed=b)
            pairs.append(measure_pair(f"random {hidden}x{layers}", dense, mod, b,
                                      args.prompt_len, args.new_tokens, args.repeats))
    if not pairs:
        p.error("give --mod and --dense exports, or --sizes")
    setup = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, prompt "
             f"{args.prompt_len}, {args.new_tokens} new tokens, greedy, fp32, median of "
             f"{args.repeats}, {_processor()}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(setup + "\n")
    print_table(pairs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "rows": [asdict(p) for p in pairs]}, f, indent=1)


if __name__ == "__main__":
    main()
