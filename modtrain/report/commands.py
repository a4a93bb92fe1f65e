"""`modtrain plot`, `modtrain routing` and `modtrain inspect`."""

from __future__ import annotations

import argparse
import json


def _plot(args: argparse.Namespace) -> None:
    from modtrain.report.curves import plot_runs

    print(f"wrote {plot_runs(args.run_dirs, args.out, args.x)}")


def _routing(args: argparse.Namespace) -> None:
    from modtrain.report.routing_map import draw_routing

    out = draw_routing(args.source, args.text, args.out, args.store, args.windows, args.device,
                       args.dtype)
    print(f"wrote {out}")


def _inspect(args: argparse.Namespace) -> None:
    from modtrain.report.inspect import format_summary, inspect_path

    info = inspect_path(args.path)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))


def add_commands(sub: argparse._SubParsersAction) -> None:
    from modtrain.inference.placement import add_placement_options
    from modtrain.report.curves import X_AXES

    p = sub.add_parser("plot", help="loss and validation curves of runs (PNG)",
                       description="Training loss (solid) and validation loss (dashed) of "
                       "each run directory, one colour per run, legend from the directory "
                       "names.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="PNG to write, e.g. curves.png")
    p.add_argument("--x", choices=X_AXES, default="step",
                   help="x axis: step, tokens seen, training FLOPs (analytic) or training time")
    p.set_defaults(func=_plot)

    r = sub.add_parser("routing", help="the routing picture of a text (PNG)",
                       description="For a text: a token x routed-layer heat map of router "
                       "weights with top-k choices framed and causal decisions dotted; and the "
                       "fraction routed by position over validation windows of a store.")
    r.add_argument("source", metavar="EXPORT_OR_RUN",
                   help="an export directory, a run directory or a checkpoint directory")
    r.add_argument("--text", required=True, help="the text to route")
    r.add_argument("--out", required=True, help="PNG to write")
    r.add_argument("--store", help="token store for the by-position panel (default: the "
                   "run's store; none for an export)")
    r.add_argument("--windows", type=int, default=64,
                   help="validation windows for the by-position panel (default 64)")
    add_placement_options(r)
    r.set_defaults(func=_routing)

    i = sub.add_parser("inspect", help="describe a run, checkpoint, export or token store",
                       description="Config, step, parallel layout, parameter count, FLOPs "
                       "per token, dataset and tokenizer identity; for a run the last "
                       "metrics. Reads JSON, YAML and safetensors headers only.")
    i.add_argument("path", metavar="PATH")
    i.add_argument("--json", action="store_true", help="JSON instead of YAML-style lines")
    i.set_defaults(func=_inspect)


def _plan(args: argparse.Namespace) -> None:
    from modtrain.report.plan import run_plan

    run_plan(args)


def add_plan_command(sub: argparse._SubParsersAction) -> None:
    """`modtrain plan` (report/plan.py, imported when it runs: the cost model needs torch)."""
    p = sub.add_parser("plan", help="memory, step time and isoFLOP planning",
                       description="Enumerate TP/PP/DP/EP/ZeRO/micro-batch/recompute layouts "
                       "of a config on N GPUs: memory per GPU, fits or not, predicted step time "
                       "from peak TFLOPs x MFU (or a calibration file) plus the exposed "
                       "communication, bubble; best fitting first. "
                       "With --isoflop: dense and MoD model sizes along an isoFLOP curve.")
    p.add_argument("config", nargs="?", metavar="CONFIG")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--gpus", type=int)
    p.add_argument("--gpu-memory", default="80GiB", help="memory of one GPU (default 80GiB)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak of one GPU (default 989, an H100 SXM)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    p.add_argument("--calibration", metavar="FILE",
                   help="achieved FLOP/s measured by benchmarks/calibrate.py (JSON); replaces "
                   "--peak-tflops x --mfu")
    p.add_argument("--intra-node-gbps", type=float, default=450.0,
                   help="GB/s a direction between GPUs of a node (default 450: NVLink 4, H100)")
    p.add_argument("--inter-node-gbps", type=float, default=50.0,
                   help="GB/s a direction per GPU across nodes (default 50: 400 Gb/s "
                   "InfiniBand a GPU)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs in a node (default 8)")
    p.add_argument("--seq", type=int, help="sequence length (default: data.seq_length)")
    p.add_argument("--global-batch", type=int,
                   help="sequences per step (default: train.global_batch_size)")
    p.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    p.add_argument("--isoflop", type=float, metavar="BUDGET_FLOPS")
    p.add_argument("--out", help="PNG of the isoFLOP curve")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_plan)
