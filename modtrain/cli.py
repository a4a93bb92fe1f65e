"""The `modtrain` command line: tokenizer, data, train, convert, generate."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from modtrain.errors import ModtrainError


def _tokenizer_train(args: argparse.Namespace) -> None:
    from modtrain.data.tokenizer import Tokenizer, train_tokenizer

    path = train_tokenizer(args.input, args.out, args.type, args.vocab_size)
    print(f"wrote {path} (vocabulary {Tokenizer(path).vocab_size})")


def _data_prepare(args: argparse.Namespace) -> None:
    from modtrain.data.prepare import prepare_store
    from modtrain.data.store import TokenStore

    path = prepare_store(args.tokenizer, args.input, args.out, overwrite=args.overwrite)
    store = TokenStore(path)
    print(f"wrote {path}: {store.num_tokens:,} tokens in {store.attrs['num_documents']} documents")


def _data_inspect(args: argparse.Namespace) -> None:
    from modtrain.data.store import TokenStore

    store = TokenStore(args.store)
    info = dict(store.attrs)
    info["tokens_array"] = {
        "shape": list(store.tokens.shape), "dtype": str(store.tokens.dtype),
        "chunks": list(store.tokens.chunks), "shards": list(store.tokens.shards or []),
    }
    print(json.dumps(info, indent=2))


def _train(args: argparse.Namespace) -> None:
    from modtrain.config import load_config

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"run.resume={args.resume}")
    config = load_config(args.config, overrides)
    from modtrain.train.inputs import check_inputs

    check_inputs(config)  # bad files are reported before DeepSpeed and megatron start
    from modtrain.parallel import destroy_distributed
    from modtrain.train.trainer import train

    result = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"done: {result.steps} steps, train loss {result.final_loss:.4f}, "
            f"val loss {result.val_loss:.4f}, {result.tokens_per_s:,.0f} tokens/s; "
            f"run directory {result.run_dir}"
        )
    destroy_distributed()


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modtrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tok = sub.add_parser("tokenizer", help="train SentencePiece tokenizers")
    tok_sub = tok.add_subparsers(dest="action", required=True)
    t = tok_sub.add_parser("train", help="train a SentencePiece model on text files")
    t.add_argument("--input", nargs="+", required=True, help="text files")
    t.add_argument("--out", required=True, help="output prefix; writes PREFIX.model")
    t.add_argument("--type", default="bpe", choices=["char", "bpe", "unigram"])
    t.add_argument("--vocab-size", type=int, default=8000)
    t.set_defaults(func=_tokenizer_train)

    data = sub.add_parser("data", help="token stores")
    data_sub = data.add_subparsers(dest="action", required=True)
    p = data_sub.add_parser("prepare", help="tokenize text files into a zarr v3 store")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    p.add_argument("--input", nargs="+", required=True, help="text files, one document each")
    p.add_argument("--out", required=True, help="output STORE.zarr")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=_data_prepare)
    i = data_sub.add_parser("inspect", help="print a store's summary")
    i.add_argument("store")
    i.set_defaults(func=_data_inspect)

    tr = sub.add_parser("train", help="train from a YAML config")
    tr.add_argument("config", help="YAML config, e.g. configs/shakespeare_mod.yaml")
    tr.add_argument("overrides", nargs="*", help="dotted overrides: model.mod.capacity=0.25")
    tr.add_argument("--resume", choices=["auto", "none"], default=None,
                    help="auto: continue from the latest checkpoint in the run directory")
    tr.set_defaults(func=_train)

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
    return parser


def _drop_local_rank(argv: list[str]) -> list[str]:
    """The deepspeed launcher inserts --local_rank=N first; the rank comes from LOCAL_RANK."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--local_rank", "--local-rank"):
            skip = True
        elif not arg.startswith(("--local_rank=", "--local-rank=")):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_drop_local_rank(sys.argv[1:] if argv is None else argv))
    # megatron-core warns about optional CUDA extensions it cannot use on CPU.
    warnings.filterwarnings("ignore", module=r"megatron\..*")
    try:
        args.func(args)
    except ModtrainError as e:
        print(f"modtrain: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
