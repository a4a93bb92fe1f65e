"""`modtrain tokenizer ...` and `modtrain data ...`."""

from __future__ import annotations

import argparse
import json
import sys

from modtrain import log


def _tokenizer_train(args: argparse.Namespace) -> None:
    from modtrain.data.tokenizer import Tokenizer, load_spec, train_tokenizer
    from modtrain.data.write.sources import text_files

    settings = load_spec(args.spec) if args.spec else {}
    if args.type is not None:
        settings["model_type"] = args.type
    if args.vocab_size is not None:
        settings["vocab_size"] = args.vocab_size
    path = train_tokenizer(text_files(args.input), args.out, overwrite=args.overwrite, **settings)
    print(f"wrote {path} (vocabulary {Tokenizer(path).vocab_size})")


def _data_prepare(args: argparse.Namespace) -> None:
    from modtrain.data.read.store import TokenStore
    from modtrain.data.write.mpi import mpi_world
    from modtrain.data.write.prepare import Interrupted, prepare_store

    try:
        path = prepare_store(
            args.tokenizer, args.input, args.out, overwrite=args.overwrite,
            workers=args.workers, input_format=args.format, jsonl_field=args.jsonl_field,
            slice_mb=args.slice_size, chunk_tokens=args.chunk_tokens,
            shard_chunks=args.shard_chunks, progress=not args.quiet, filter=args.filter,
        )
    except Interrupted as stop:
        end_line = "\n" if sys.stderr.isatty() else ""  # after the live progress line
        log.note(f"{end_line}modtrain: data prepare {stop}; finished slices are kept, the same "
                 "command continues from them")
        sys.exit(128 + stop.signum)
    comm = mpi_world()
    if comm is None or comm.Get_rank() == 0:
        store = TokenStore(path)
        print(f"wrote {path}: {store.num_tokens:,} tokens in {store.num_documents:,} documents")


def _data_inspect(args: argparse.Namespace) -> None:
    from modtrain.data.read.store import TokenStore

    store = TokenStore(args.store)
    info = dict(store.attrs)
    info["tokens_array"] = {
        "shape": list(store.tokens.shape), "dtype": str(store.tokens.dtype),
        "chunks": list(store.tokens.chunks), "shards": list(store.tokens.shards or []),
    }
    if args.verify:
        from modtrain.data.read.verify import verify_store

        info["verify"] = verify_store(store)
    print(json.dumps(info, indent=2))
    if args.verify:
        v = info["verify"]
        log.note(f"verified {store.path}: {v['shards']} shard checksums, {v['tokens']:,} ids "
                 f"below {store.vocab_size}, {v['documents']:,} documents end with EOS")


def add_commands(sub: argparse._SubParsersAction) -> None:
    from modtrain.data.format import CHUNK_TOKENS, SHARD_CHUNKS
    from modtrain.data.write import sources

    tok = sub.add_parser("tokenizer", help="train SentencePiece tokenizers")
    tok_sub = tok.add_subparsers(dest="action", required=True)
    t = tok_sub.add_parser("train", help="train a SentencePiece model on text files")
    t.add_argument("--input", nargs="+", required=True,
                   help="plain text files, directories or glob patterns (as data prepare)")
    t.add_argument("--out", required=True, help="output prefix; writes PREFIX.model")
    t.add_argument("--spec", help="tokenizer/NAME.yaml: type, vocabulary size, sentence "
                   "sampling, threads (flags given here override it)")
    t.add_argument("--type", choices=["char", "bpe", "unigram"], help="default: bpe")
    t.add_argument("--vocab-size", type=int, help="default: 8000")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing PREFIX.model (stores built with it stop verifying)")
    t.set_defaults(func=_tokenizer_train)

    data = sub.add_parser("data", help="token stores")
    data_sub = data.add_subparsers(dest="action", required=True)
    p = data_sub.add_parser(
        "prepare", help="tokenize corpora into a zarr v3 store",
        description="Encode text into a sharded zarr v3 token store. In parallel with "
        "--workers N, or one rank per share of the inputs under mpirun/srun (mpi4py). "
        "An interrupted run resumes when rerun with the same arguments.",
    )
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    p.add_argument("--input", nargs="+", required=True,
                   help=f"files, directories or glob patterns: {sources.describe_formats()}, "
                        "optionally .gz or .zst")
    p.add_argument("--out", required=True, help="output STORE.zarr")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store, moving it aside to OUT.old-<time> (and discard "
                        "a partial build of other inputs); anything else at OUT is refused")
    p.add_argument("--workers", type=int, default=1, help="local encoding processes (default 1)")
    p.add_argument("--format", default=sources.AUTO, choices=list(sources.format_choices()),
                   help=f"input format; {sources.AUTO}: {sources.describe_detection()}")
    p.add_argument("--text-field", "--jsonl-field", dest="jsonl_field", default="text",
                   metavar="NAME",
                   help="JSON field or Parquet/Arrow column holding the text (default text)")
    p.add_argument("--filter", metavar="'COLUMN OP VALUE'",
                   help="keep only the records where it holds, e.g. 'lang==en' or "
                        "'score>=3.5' (OP: == != >= <= > <)")
    p.add_argument("--slice-size", type=float, default=None, metavar="MB",
                   help="input megabytes per unit of work (default: the corpus over 4 per "
                        "worker, 1 to 64)")
    p.add_argument("--chunk-tokens", type=int, default=CHUNK_TOKENS,
                   help="tokens per compressed chunk, the unit of random reads "
                        f"(default {CHUNK_TOKENS})")
    p.add_argument("--shard-chunks", type=int, default=SHARD_CHUNKS,
                   help=f"chunks per shard file (default {SHARD_CHUNKS})")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_data_prepare)
    i = data_sub.add_parser("inspect", help="print a store's summary")
    i.add_argument("store")
    i.add_argument("--verify", action="store_true",
                   help="check every shard's checksum and every token id against the vocabulary")
    i.set_defaults(func=_data_inspect)

