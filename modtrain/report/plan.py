"""`modtrain plan`: layouts that fit a model on N GPUs, ranked by predicted step time; and
model sizes along an isoFLOP curve."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Any

from modtrain.config import load_config
from modtrain.config.schema import ModelConfig
from modtrain.errors import ModtrainError
from modtrain.model.cost import (
    RECOMPUTE,
    Layout,
    Links,
    activation_bytes,
    comm_bytes,
    model_state_bytes,
    rank_params,
    step_time,
)
from modtrain.model.flops import training_flops_per_token
from modtrain.model.param_table import parameter_count
from modtrain.report.calibration import load_achieved_flops

GIB = 2**30
_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
          "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def parse_bytes(text: str) -> float:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise ModtrainError(f"--gpu-memory {text!r} is not a size; write e.g. 80GiB or 40GB")
    return float(match.group(1)) * _UNITS[match.group(2).upper()]


def _divisors(n: int) -> list[int]:
    return [i for i in range(1, n + 1) if n % i == 0]


def layouts(m: ModelConfig, gpus: int, global_batch: int, precision: str) -> list[Layout]:
    """Every valid layout: TP | heads (within an 8-GPU node), PP | layers, DP = N/(TP PP),
    EP | experts and DP, ZeRO 0-3 (0/1 under a pipeline, as DeepSpeed allows), micro-batches
    dividing the per-rank batch, recompute none/selective/full, sequence parallelism on or
    off where TP > 1 without a pipeline (parallel.sequence_parallel's rule)."""
    out = []
    experts = m.moe.num_experts if m.moe.enabled else 1
    for tp in _divisors(gpus):
        if tp > 8 or m.num_heads % tp:
            continue
        for pp in _divisors(gpus // tp):
            if m.num_layers % pp:
                continue
            dp = gpus // (tp * pp)
            if global_batch % dp:
                continue
            for ep in (e for e in _divisors(experts) if dp % e == 0):
                for zero in range(4 if pp == 1 else 2):
                    for mb in _divisors(global_batch // dp):
                        if mb > 16:
                            break
                        for rc in RECOMPUTE:
                            for sp in (False, True) if tp > 1 and pp == 1 else (False,):
                                out.append(Layout(tp, pp, dp, ep, zero, mb, rc, precision, sp))
    return out


def evaluate(m: ModelConfig, layout: Layout, seq: int, global_batch: int, memory: float,
             peak_tflops: float, mfu: float, links: Links | None = None) -> dict:
    states = model_state_bytes(rank_params(m, layout), layout)
    in_flight = min(layout.pipeline, global_batch // (layout.data * layout.micro_batch))
    act = in_flight * activation_bytes(m, layout, seq, head=layout.pipeline == 1) + (
        activation_bytes(m, layout, seq, layers=0) if layout.pipeline > 1 else 0)
    total = states.total + act
    time = step_time(m, layout, seq, global_batch, peak_tflops, mfu, links or Links())
    return {"layout": dataclasses.asdict(layout), "params_gib": states.params / GIB,
            "grads_gib": states.grads / GIB, "optim_gib": states.optim / GIB,
            "activations_gib": act / GIB, "total_gib": total / GIB, "fits": total <= memory,
            "step_s": time.seconds, "tokens_per_s": time.tokens_per_s, "bubble": time.bubble,
            "compute_s": time.compute_s, "exposed_comm_s": time.comm_s,
            "comm_gib": sum(comm_bytes(m, layout, seq, global_batch).values()) / GIB}


def plan(m: ModelConfig, gpus: int, memory: float, seq: int, global_batch: int,
         peak_tflops: float, mfu: float, precision: str, links: Links | None = None
         ) -> list[dict]:
    """Rows for every layout: fitting ones first, fastest first, then least communication
    and least memory."""
    rows = [evaluate(m, lay, seq, global_batch, memory, peak_tflops, mfu, links)
            for lay in layouts(m, gpus, global_batch, precision)]
    if not rows:
        raise ModtrainError(f"no layout of {gpus} GPUs divides the model and the global batch "
                            f"{global_batch}; pick --gpus and --global-batch with common factors")
    return sorted(rows, key=lambda r: (not r["fits"], round(r["step_s"], 6), r["comm_gib"],
                                       r["total_gib"]))


HEADER = (f"{'TP':>3} {'SP':>3} {'PP':>3} {'DP':>5} {'EP':>3} {'Z':>2} {'MB':>3} {'RC':>4} "
          f"{'params':>7} {'grads':>7} {'optim':>7} {'activ':>7} {'total':>7} {'fits':>4} "
          f"{'step s':>8} {'comm s':>7} {'tokens/s':>10} {'bubble':>6} {'comm GiB':>9}")


def format_row(r: dict) -> str:
    lay = r["layout"]
    return (f"{lay['tensor']:>3} {'yes' if lay['sequence_parallel'] else 'no':>3} "
            f"{lay['pipeline']:>3} {lay['data']:>5} {lay['expert']:>3} "
            f"{lay['zero_stage']:>2} {lay['micro_batch']:>3} {_RC[lay['recompute']]:>4} "
            f"{r['params_gib']:>7.2f} {r['grads_gib']:>7.2f} {r['optim_gib']:>7.2f} "
            f"{r['activations_gib']:>7.2f} {r['total_gib']:>7.2f} "
            f"{'yes' if r['fits'] else 'no':>4} {r['step_s']:>8.3f} {r['exposed_comm_s']:>7.3f} "
            f"{r['tokens_per_s']:>10.3g} "
            f"{r['bubble']:>6.3f} {r['comm_gib']:>9.2f}")


_RC = {"none": "none", "selective": "sel", "full": "full"}


def isoflop_family(budget: float, seq: int, vocab: int = 32000) -> list[dict]:
    """Dense and MoD models of widths 512-4096 (depth = width / 64, as the paper's family
    scales both), each trained on budget / (training FLOPs per token) tokens."""
    rows = []
    variants = [("dense", None, None)] + [
        (f"mod c={c} {every}", c, every) for c in (0.125, 0.25, 0.5)
        for every in ("every", "every_other")]
    for width in (512, 768, 1024, 1536, 2048, 3072, 4096):
        layers = max(2, width // 64)
        for name, capacity, every in variants:
            mod: dict[str, Any] = {} if capacity is None else {
                "enabled": True, "capacity": capacity, "predictor": False,
                "inference_routing": "router",
                "routed_layers": list(range(layers)) if every == "every" else None}
            m = ModelConfig(vocab_size=vocab, num_layers=layers, hidden_size=width,
                            num_heads=width // 64, max_seq_length=seq)
            if mod:
                m = dataclasses.replace(m, mod=dataclasses.replace(m.mod, **mod))
            per_token = training_flops_per_token(m, seq)
            rows.append({"variant": name, "width": width, "layers": layers,
                         "params": parameter_count(m), "flops_per_token": per_token,
                         "tokens": budget / per_token})
    return rows


def plot_isoflop(rows: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        pts = [r for r in rows if r["variant"] == variant]
        ax.plot([r["params"] for r in pts], [r["tokens"] for r in pts], marker="o", label=variant)
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="training tokens")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_plan(args: argparse.Namespace) -> None:
    if args.isoflop is not None:
        rows = isoflop_family(args.isoflop, args.seq or 2048)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'variant':<22} {'width':>6} {'layers':>6} {'params':>10} "
                  f"{'FLOPs/token':>12} {'tokens':>10}")
            for r in rows:
                print(f"{r['variant']:<22} {r['width']:>6} {r['layers']:>6} {r['params']:>10.3g} "
                      f"{r['flops_per_token']:>12.3g} {r['tokens']:>10.3g}")
        if args.out:
            plot_isoflop(rows, args.out)
            print(f"wrote {args.out}")
        return
    if args.config is None or args.gpus is None:
        raise ModtrainError("plan needs CONFIG and --gpus N (or --isoflop BUDGET_FLOPS)")
    config = load_config(args.config, args.overrides)
    m = config.model
    if m.vocab_size <= 0:
        raise ModtrainError("model.vocab_size is 0 (taken from the data store in training); "
                            "set it in the config or pass model.vocab_size=N")
    seq = args.seq or config.data.seq_length
    batch = args.global_batch or config.train.global_batch_size
    memory = parse_bytes(args.gpu_memory)
    precision = "fp32" if config.train.precision == "fp32" else "bf16"
    peak, mfu, speed = args.peak_tflops, args.mfu, f"{args.peak_tflops:g} TFLOP/s x MFU {args.mfu}"
    if args.calibration:
        peak, mfu = load_achieved_flops(args.calibration) / 1e12, 1.0
        speed = f"{peak:.4g} TFLOP/s achieved ({args.calibration})"
    links = Links(args.intra_node_gbps, args.inter_node_gbps, args.gpus_per_node)
    rows = plan(m, args.gpus, memory, seq, batch, peak, mfu, precision, links)
    if args.json:
        print(json.dumps({"parameters": parameter_count(m), "rows": rows[:args.top]}, indent=2))
        return
    print(f"{parameter_count(m) / 1e9:.2f} B parameters, {args.gpus} GPUs of "
          f"{memory / GIB:.0f} GiB, sequence {seq}, global batch {batch}, {precision}; GiB a GPU")
    print(f"compute at {speed}; links {links.intra_node_gbps:g} GB/s in a node of "
          f"{links.gpus_per_node}, {links.inter_node_gbps:g} GB/s across")
    print(HEADER)
    for r in rows[:args.top]:
        print(format_row(r))
    if not rows[0]["fits"]:
        smallest = min(rows, key=lambda r: r["total_gib"])
        print(f"no layout fits in {memory / GIB:.0f} GiB: the smallest needs "
              f"{smallest['total_gib']:.1f} GiB a GPU (add GPUs or memory)")
