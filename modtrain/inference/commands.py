"""`modtrain convert ...` and `modtrain generate ...`."""

from __future__ import annotations

import argparse
import codecs
import re
from pathlib import Path

from modtrain import log
from modtrain.errors import ModtrainError

# Python's string escapes: \\ \' \" \a \b \f \n \r \t \v, octal, \xHH, \uHHHH, \UHHHHHHHH, \N{name}.
_ESCAPE = re.compile(r"""\\(?:[\\'"abfnrtv]|[0-7]{1,3}|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}"""
                     r"|U[0-9a-fA-F]{8}|N\{[^}]*\})")


def _convert(args: argparse.Namespace) -> None:
    from modtrain.inference.export import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out, args.dtype, args.tokenizer)
    print(f"wrote {out}/ (model.safetensors, config.json, tokenizer.model)")


def unescape(text: str, option: str) -> str:
    """Decode the escapes in `text` as a Python string literal would (`\\n` -> newline).

    Each escape is decoded on its own, so every other character (non-ASCII included) stays
    as typed, as does a backslash that starts no escape.
    """

    def decode(match: re.Match) -> str:
        try:
            return codecs.decode(match.group(), "unicode_escape")
        except UnicodeDecodeError:
            raise ModtrainError(f"{option} {text!r}: {match.group()} is not a valid escape; "
                                "write a backslash itself as \\\\") from None

    return _ESCAPE.sub(decode, text)


def _generate(args: argparse.Namespace) -> None:
    from modtrain.inference.generate import generate_text
    from modtrain.inference.sampling import Sampling

    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    texts, result = generate_text(
        args.export_dir, args.prompt, args.max_new_tokens, args.num_samples, sampling,
        args.seed, None if args.stop is None else unescape(args.stop, "--stop"),
        use_cache=not args.no_cache, routing=args.routing, device=args.device, dtype=args.dtype,
        context=args.context,
    )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i} ---")
        print(text)
    if args.stats:
        decode_s = max(result.seconds - result.prefill_seconds, 1e-9)
        steps = max(result.new_tokens - 1, 0)
        log.note(f"{result.new_tokens} tokens x {len(texts)} rows in {result.seconds:.2f} s "
                 f"(prefill {result.prefill_seconds * 1e3:.1f} ms, decode "
                 f"{steps * len(texts) / decode_s:.1f} tokens/s); key/value cache "
                 f"{result.cache_used_bytes / 1024:.1f} KiB used, "
                 f"{result.cache_allocated_bytes / 1024:.1f} KiB allocated")


def _eval(args: argparse.Namespace) -> None:
    import json

    from modtrain.inference.evaluate import evaluate

    result = evaluate(args.export_dir, [t for t in args.tasks.split(",") if t], args.limit,
                      args.device)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for task, metrics in result["results"].items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, float) and "stderr" not in k)
        print(f"{task}: {shown}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="training checkpoint -> Hugging Face-loadable export")
    c.add_argument("checkpoint", help="run directory, its checkpoints/ dir or a tag dir")
    c.add_argument("--out", required=True, help="export directory (replaced if an export)")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    c.add_argument("--tokenizer", default=None,
                   help="SentencePiece model to ship (default: the one training used)")
    c.set_defaults(func=_convert)

    g = sub.add_parser(
        "generate", help="sample text from an export (KV-cached)",
        description="Sample continuations of --prompt from an export. Sliding context window: "
        "the model sees at most the window it was trained on (config.json's "
        "max_position_embeddings, training's model.max_seq_length). A longer prompt keeps its "
        "last half window (a warning on stderr says how many tokens), and when generation "
        "fills the window the context restarts from its last half, so every token is "
        "predicted from between half and a whole window of text.")
    g.add_argument("export_dir")
    g.add_argument("--prompt", default="\n")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--num-samples", type=int, default=1, help="rows sampled as one batch")
    g.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    g.add_argument("--top-k", type=int, default=0, help="0: off")
    g.add_argument("--top-p", type=float, default=1.0, help="1: off")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", default=None,
                   help="end a sample before this text; Python escapes are decoded "
                   "('\\n\\n': a blank line, '\\t', '\\\\': a backslash, '\\x41', '\\u00e9')")
    g.add_argument("--context", type=int, default=None,
                   help="the window in tokens (default: the training context); past it only "
                   "for an export trained with model.rope_scaling (docs/long_context.md)")
    g.add_argument("--routing", default=None, choices=["predictor", "router"],
                   help="causal routing of MoD layers (default: the export's; a dense export "
                   "has none)")
    from modtrain.inference.placement import add_placement_options

    add_placement_options(g)
    g.add_argument("--no-cache", action="store_true",
                   help="recompute the whole context every token (slow; for checking)")
    g.add_argument("--stats", action="store_true",
                   help="print speed and key/value cache memory to stderr")
    g.set_defaults(func=_generate)

    e = sub.add_parser("eval", help="lm-evaluation-harness tasks on an export (docs/evaluation.md)")
    e.add_argument("export_dir")
    e.add_argument("--tasks", default="shakespeare_ppl",
                   help="comma-separated: shakespeare_ppl (shipped) or lm-eval task names")
    e.add_argument("--out", default=None, help="write the results as JSON here")
    e.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    e.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    e.set_defaults(func=_eval)
