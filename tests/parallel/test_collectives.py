"""modtrain/parallel/collectives.py: what every rank agrees on, and tensors built on the
device given (NCCL has no CPU backend; gloo tests cannot see a CPU tensor handed to it)."""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modtrain.parallel import collectives
from tests.train.helpers import free_port

SOURCE = Path(collectives.__file__)
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange"}


def factories_without_device(source: str) -> list[int]:
    """Lines that build a tensor (torch.tensor, torch.zeros, ...) without `device=`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in FACTORIES and ast.unparse(node.func.value) == "torch"
                and "device" not in {k.arg for k in node.keywords}):
            lines.append(node.lineno)
    return lines


def test_every_tensor_the_module_builds_names_its_device():
    assert factories_without_device(SOURCE.read_text()) == []


def test_the_device_check_sees_a_tensor_without_device():
    src = "t = torch.tensor([1.0])\nu = torch.zeros(2, device=d)\n"
    assert factories_without_device(src) == [1]


def test_one_process_needs_no_process_group():
    summary = collectives.summarize_step([torch.tensor(0.0), True],
                                         {"loss": torch.tensor(2.5)}, torch.device("cpu"))
    assert (summary.any_nonfinite, summary.any_stop, summary.means) == (False, True,
                                                                        {"loss": 2.5})


def test_ratios_of_sums_one_process_nan_where_nothing_counted():
    ratios = collectives.ratios_of_sums(torch.tensor([3.0, 0.0, 5.0]), [2, 0, 4], None,
                                        torch.device("cpu"))
    assert ratios[0] == 1.5 and math.isnan(ratios[1]) and ratios[2] == 1.25


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cpu = torch.device("cpu")
    # Rank 1 alone saw a non-finite loss, rank 0 alone a stop signal.
    summary = collectives.summarize_step(
        [torch.tensor(float(rank == 1)), rank == 0],
        {"loss": torch.tensor(1.0 + 2 * rank), "stat": torch.tensor(4.0 * rank)}, cpu)
    # A statistic of one pipeline stage out of 2 (the other holds 0): the mean is its value.
    copies = collectives.summarize_step([], {"loss": torch.tensor(6.0 * (rank == 0))}, cpu,
                                        share=2)
    # Per source: the second source counted nothing on either rank.
    ratio = collectives.ratios_of_sums(torch.tensor([6.0 * (rank + 1), 0.0]), [2 + rank, 0],
                                       None, cpu)
    result = {"summary": summary, "copies": copies.means, "ratio": ratio,
              "max": collectives.max_over(5 + rank, cpu),
              "mean": collectives.mean_over({"a": float(rank)}, None, cpu),
              "gathered": collectives.gather_objects(rank * 10),
              "broadcast": collectives.broadcast_object(f"from {rank}")}
    torch.save(result, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree(tmp_path):
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(free_port(), out), nprocs=2, start_method="spawn")
    for rank in range(2):
        r = torch.load(f"{out}.{rank}", weights_only=False)
        assert r["summary"] == collectives.StepSummary(True, True, {"loss": 2.0, "stat": 2.0})
        assert r["copies"] == {"loss": 6.0}
        assert r["ratio"][0] == pytest.approx(18.0 / 5) and math.isnan(r["ratio"][1])
        assert r["max"] == 6 and r["mean"] == {"a": 0.5}
        assert r["gathered"] == [0, 10] and r["broadcast"] == "from 0"
