"""`modtrain tokenizer ...` and `modtrain data ...`."""

from __future__ import annotations

import argparse
import json


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


def add_commands(sub: argparse._SubParsersAction) -> None:
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

