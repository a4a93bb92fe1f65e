"""`modtrain convert ...` and `modtrain generate ...`."""

from __future__ import annotations

import argparse


def _convert(args: argparse.Namespace) -> None:
    from modtrain.parallel import select_accelerator

    select_accelerator()
    from modtrain.inference.export import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out, args.dtype)
    print(f"wrote {out}/model.safetensors, config.json, tokenizer.model")


def _generate(args: argparse.Namespace) -> None:
    from modtrain.parallel import destroy_distributed, init_distributed

    # megatron-core layers read their (size 1) tensor-parallel group.
    init_distributed(deepspeed_comm=False)
    from modtrain.inference.generate import generate_text

    texts = generate_text(
        args.export_dir, args.prompt, args.max_new_tokens, args.num_samples,
        args.temperature, args.top_k, args.top_p, args.seed,
    )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i} ---")
        print(text)
    destroy_distributed()


def add_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="training checkpoint -> safetensors export")
    c.add_argument("checkpoint", help="run directory, its checkpoints/ dir or a tag dir")
    c.add_argument("--out", required=True, help="export directory")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    c.set_defaults(func=_convert)

    g = sub.add_parser("generate", help="sample text from an export")
    g.add_argument("export_dir")
    g.add_argument("--prompt", default="\n")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_generate)
