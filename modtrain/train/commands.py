"""`modtrain train ...`."""

from __future__ import annotations

import argparse
import os
import sys


def _train(args: argparse.Namespace) -> None:
    from modtrain.config import load_config

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"run.resume={args.resume}")
    config = load_config(args.config, overrides)
    from modtrain.train.inputs import check_inputs

    check_inputs(config)  # bad files are reported before DeepSpeed and megatron start
    from modtrain.parallel import destroy_distributed
    from modtrain.train.signals import EXIT_REQUEUE, RequeueRequested
    from modtrain.train.trainer import train

    try:
        result = train(config)
    except RequeueRequested as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"modtrain: {stop}", file=sys.stderr)
        destroy_distributed()
        sys.exit(EXIT_REQUEUE)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"done: {result.steps} steps, train loss {result.final_loss:.4f}, "
            f"val loss {result.val_loss:.4f}, {result.tokens_per_s:,.0f} tokens/s; "
            f"run directory {result.run_dir}"
        )
    destroy_distributed()


def add_commands(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train from a YAML config")
    tr.add_argument("config", help="YAML config, e.g. configs/shakespeare_mod.yaml")
    tr.add_argument("overrides", nargs="*", help="dotted overrides: model.mod.capacity=0.25")
    tr.add_argument("--resume", choices=["auto", "none"], default=None,
                    help="auto: continue from the latest checkpoint in the run directory")
    tr.set_defaults(func=_train)

