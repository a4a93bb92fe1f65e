"""Greedy KV-cached decode tokens/s of exports on one device, batch 1 and 8 (benchmarks/gpu.sh).

    python benchmarks/gpu_decode.py EXPORT [EXPORT ...] --device cuda --dtype bf16 --json OUT

Each export decodes --new-tokens tokens after a --prompt-len token random prompt, through
`modtrain generate`'s code path (generate_ids). Speed is batch x new tokens / wall time of
the whole call (the prompt's prefill, one forward of --prompt-len tokens, is included),
the median of --repeats after one warm-up call, exports interleaved repeat by repeat so
load from other processes hits all alike. The device is synchronised around each call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from modtrain.inference.export import load_export
from modtrain.inference.generate import generate_ids

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_decode(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Tokens/s of one generate_ids call (all rows, prefill included)."""
    sync(prompt.device)
    start = time.perf_counter()
    result = generate_ids(model, prompt, new_tokens)
    sync(prompt.device)
    return prompt.shape[0] * result.new_tokens / (time.perf_counter() - start)


def measure(exports: list[str], device: torch.device, dtype: torch.dtype, batches: list[int],
            prompt_len: int, new_tokens: int, repeats: int) -> list[dict]:
    models = {e: load_export(e, dtype=dtype).to(device) for e in exports}
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        vocab = min(m.config.vocab_size for m in models.values())
        prompt = torch.randint(2, vocab, (batch, prompt_len), generator=g).to(device)
        for model in models.values():
            generate_ids(model, prompt, 4)  # warm-up: allocator, kernel selection
        speeds: dict[str, list[float]] = {e: [] for e in exports}
        for rep in range(repeats):
            for e in exports if rep % 2 == 0 else exports[::-1]:
                speeds[e].append(timed_decode(models[e], prompt, new_tokens))
        rows += [{"export": e, "batch": batch, "tokens_per_s": statistics.median(s),
                  "runs": s} for e, s in speeds.items()]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", help="export directories (modtrain convert)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = measure(args.exports, device, DTYPES[args.dtype], args.batches, args.prompt_len,
                   args.new_tokens, args.repeats)
    for r in rows:
        print(f"{Path(r['export']).name}: batch {r['batch']}: {r['tokens_per_s']:,.0f} tok/s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"device": str(device), "dtype": args.dtype, "prompt_len": args.prompt_len,
             "new_tokens": args.new_tokens, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
