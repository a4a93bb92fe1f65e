"""The `modtrain` command line. Each command group registers itself from its own package."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from modtrain import log
from modtrain.errors import ModtrainError
from modtrain.train.commands import shield_stop_signals
from modtrain.train.signals import STOP_SIGNALS


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


# `modtrain train` under Slurm may be told to stop at any moment, even while the command
# groups below still import torch: from here on a stop signal is held for training.
if Path(sys.argv[0]).name in ("modtrain", "__main__.py") and \
        _drop_local_rank(sys.argv[1:])[:1] == ["train"]:
    shield_stop_signals(STOP_SIGNALS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modtrain", description="Pretraining of Mixture-of-Depths language models."
    )
    from modtrain.cluster.commands import add_commands as add_cluster_commands
    from modtrain.data.commands import add_commands as add_data_commands
    from modtrain.inference.commands import add_commands as add_inference_commands
    from modtrain.report.commands import add_commands as add_report_commands
    from modtrain.report.commands import add_plan_command
    from modtrain.train.commands import add_commands as add_train_commands

    sub = parser.add_subparsers(dest="command", required=True)
    add_data_commands(sub)
    add_train_commands(sub)
    add_inference_commands(sub)
    add_report_commands(sub)
    add_plan_command(sub)
    add_cluster_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(_drop_local_rank(sys.argv[1:] if argv is None else argv))
    if extra and getattr(args, "trailing_overrides", False) and not any(
            e.startswith("-") or "=" not in e for e in extra):
        args.overrides = [*args.overrides, *extra]  # `submit CONFIG --nodes 2 key=value`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # megatron-core warns about optional CUDA extensions it cannot use on CPU.
    warnings.filterwarnings("ignore", module=r"megatron\..*")
    try:
        args.func(args)
    except ModtrainError as e:
        log.error(str(e))
        return 2
    except OSError as e:  # permissions, a full disk, a path under a file: the OS's words
        where = f": {e.filename}" if e.filename is not None else ""
        log.error(f"{e.strerror or e}{where}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
