"""Throughput as FLOPs: achieved TFLOP/s per device and model FLOPs utilisation (MFU).

FLOPs per token come from the analytic formulas (`model/flops.py`, routing included), so
MoD's skipped tokens do not count as work done. MFU needs the device's peak rate:
`train.peak_tflops`, or the dense bf16 peak of a known GPU.
"""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks (TFLOP/s, SXM parts, no sparsity), by device-name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def device_peak_tflops(configured: float, device: torch.device) -> float | None:
    """The peak rate MFU is measured against: the configured one, a known GPU's, or None."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def throughput_record(tokens_per_s: float, flops_per_token: float, world_size: int,
                      peak_tflops: float | None) -> dict[str, float]:
    """flops_per_token, achieved TFLOP/s per device, and MFU when the peak is known."""
    per_device = tokens_per_s * flops_per_token / world_size / 1e12
    record = {"flops_per_token": flops_per_token, "tflops_per_device": per_device}
    if peak_tflops:
        record["mfu"] = per_device / peak_tflops
    return record
