"""`modtrain train ...` and `modtrain checkpoint universal ...`."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from modtrain import log

if TYPE_CHECKING:
    from modtrain.config import Config

_SHIELDED = False


def shield_stop_signals(signals: tuple[signal.Signals, ...]) -> None:
    """Route stop signals to training only, and hold one that comes before training can act.

    Slurm passes a signal on to every process of a task, children included: the compiler
    DeepSpeed runs while it starts would die of SIGUSR1. So the main thread blocks the
    signals (every thread and child it starts inherits that) and one idle thread receives
    them for the process; Python runs the handler in the main thread as usual. Until training
    installs its handlers (signals.StopFlag), SIGUSR1 is held and then delivered again, so
    a pre-timeout signal during start-up still ends in a checkpoint and exit 75; SIGTERM and
    SIGINT end the start-up at once (signals.exit_before_training).
    """
    from modtrain.train.signals import EXIT_AT_START, exit_before_training

    global _SHIELDED
    if _SHIELDED:
        return
    _SHIELDED = True
    started = threading.Event()

    def receive() -> None:  # the one thread with the signals unblocked
        started.set()
        threading.Event().wait()

    threading.Thread(target=receive, name="modtrain-signals", daemon=True).start()
    started.wait()
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def redeliver(sig: int) -> None:
        while signal.getsignal(sig) is hold:
            time.sleep(0.05)
        os.kill(os.getpid(), sig)

    def hold(sig: int, frame) -> None:
        threading.Thread(target=redeliver, args=(sig,), daemon=True).start()

    signal.signal(signal.SIGINT, exit_before_training)
    # SIGTERM last: once it is caught, every stop signal is (tests wait for that)
    for sig in sorted(signals, key=lambda s: s in EXIT_AT_START):
        signal.signal(sig, exit_before_training if sig in EXIT_AT_START else hold)


def print_config_warnings(config: Config, is_main: bool) -> None:
    """Config.warnings() on stderr, once per job (rank 0)."""
    if is_main:
        for message in config.warnings():
            log.warning(message)


def _train(args: argparse.Namespace) -> None:
    from modtrain.train.signals import STOP_SIGNALS

    shield_stop_signals(STOP_SIGNALS)
    from modtrain.config import load_config

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"run.resume={args.resume}")
    config = load_config(args.config, overrides)
    from modtrain.train.trainer import preflight

    # Bad files and run directories are reported before DeepSpeed and megatron start.
    sources = preflight(config, args.overwrite)
    from modtrain.launcher import detect
    from modtrain.train.run_guard import hold_run_dir

    launch = detect()  # a contradictory launch is reported before DeepSpeed starts too
    print_config_warnings(config, launch.is_main)
    from modtrain.parallel import destroy_distributed
    from modtrain.train.signals import EXIT_REQUEUE, RequeueRequested
    from modtrain.train.trainer import train

    # Rank 0 holds the run directory for the whole job; a second training into it stops
    # before DeepSpeed starts, and its launcher ends the other ranks of that job.
    held = hold_run_dir(Path(config.run.dir)) if launch.is_main else contextlib.nullcontext()
    with held:
        try:
            result = train(config, overwrite=args.overwrite, sources=sources)
        except RequeueRequested as stop:
            log.note(f"modtrain: {stop}")
            destroy_distributed()
            sys.exit(EXIT_REQUEUE)
    if launch.is_main:
        print(
            f"done: {result.steps} steps, world size {launch.world_size} ({launch.launcher}), "
            f"train loss {result.final_loss:.4f}, "
            f"val loss {result.val_loss:.4f}, {result.tokens_per_s:,.0f} tokens/s; "
            f"run directory {result.run_dir}"
        )
    destroy_distributed()


def _universal(args: argparse.Namespace) -> None:
    from modtrain.checkpoint.format import STATE_FILE
    from modtrain.checkpoint.tags import complete_tags, latest_tag, read_state
    from modtrain.errors import ModtrainError

    root = Path(args.checkpoint_dir)
    tag = args.tag or latest_tag(root)
    if tag is None:
        raise ModtrainError(f"{root} has no 'latest' checkpoint; pass --tag step_NNNNNNNN")
    if not (root / tag / STATE_FILE).is_file():
        raise ModtrainError(f"{root / tag} is not a complete modtrain checkpoint; pick one of: "
                            + (", ".join(complete_tags(root)) or "(none)"))
    from modtrain.checkpoint.files import check_tag

    problems, _ = check_tag(root / tag)  # a damaged tag would convert into a damaged copy
    if problems:
        unsafe = [p.text for p in problems if p.kind == "unsafe"]
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise ModtrainError(unsafe[0] if unsafe else
                            f"{root / tag} is damaged ({problems[0].text}{more}); restore the "
                            "file, or pass --tag with an older checkpoint that verifies")
    if read_state(root, tag).saved_layout(str(root / tag)).zero_stage == 0:
        raise ModtrainError(f"{root / tag} was saved with train.zero_stage=0; DeepSpeed builds "
                            "universal checkpoints from ZeRO states only (train with ZeRO 1-3)")
    from modtrain.checkpoint.engine.universal import write_universal

    print(write_universal(root, tag, args.pipeline > 1, log=log.note))


def add_commands(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train from a YAML config")
    tr.add_argument("config", help="YAML config, e.g. configs/shakespeare_mod.yaml")
    tr.add_argument("overrides", nargs="*", help="dotted overrides: model.mod.capacity=0.25")
    tr.add_argument("--resume", choices=["auto", "none"], default=None,
                    help="auto: continue from the latest checkpoint in the run directory")
    tr.add_argument("--overwrite", action="store_true",
                    help="move an earlier run in run.dir aside to RUN_DIR.old-<time> first")
    # `train CONFIG --resume auto key=value`: overrides may also follow the options.
    tr.set_defaults(func=_train, trailing_overrides=True)

    ck = sub.add_parser("checkpoint", help="training checkpoints")
    ck_sub = ck.add_subparsers(dest="checkpoint_command", required=True)
    u = ck_sub.add_parser(
        "universal", help="convert a checkpoint for resuming on another parallel layout",
        description="Write CHECKPOINT_DIR/.universal[-pipeline]-TAG, the DeepSpeed universal "
        "checkpoint that `modtrain train --resume auto` loads when the layout changed. Resume "
        "converts on its own (rank 0, the others wait); converting ahead keeps a large model's "
        "ranks from waiting past the collective timeout.")
    u.add_argument("checkpoint_dir", help="RUN_DIR/checkpoints")
    u.add_argument("--tag", help="step_NNNNNNNN to convert (default: the latest)")
    u.add_argument("--pipeline", type=int, default=1,
                   help="parallel.pipeline of the run that will resume (names differ with >1)")
    u.set_defaults(func=_universal)

