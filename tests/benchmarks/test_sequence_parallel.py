"""benchmarks/sequence_parallel.py: with SP each tensor rank keeps about half the width-H
activations of TP=2 alone, dense and MoD."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.train.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sequence_parallel_halves_the_width_h_activations():
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         str(ROOT / "benchmarks" / "sequence_parallel.py"), "--seqs", "128", "--width", "64"],
        env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines()
            if line.startswith(("dense |", "MoD 0.125 |"))]
    assert [row[0] for row in rows] == ["dense", "MoD 0.125"]
    for row in rows:
        width_ratio, blocks_ratio = float(row[3]), float(row[5])
        assert 0.45 < width_ratio < 0.6, row  # 1/TP plus the whole [k, B, H] block output
        assert blocks_ratio < 0.9, row
