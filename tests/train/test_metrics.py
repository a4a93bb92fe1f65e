"""metrics.jsonl survives kills: whole lines only."""

from __future__ import annotations

import json

from modtrain.train.metrics import MetricsWriter


def test_reopening_drops_a_partial_last_line_and_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.write({"step": 1, "loss": 2.5})
    writer.close()
    with open(path, "a") as f:  # what a kill -9 in the middle of a write leaves
        f.write('{"step": 2, "lo')
    writer = MetricsWriter(path)
    writer.write({"step": 2, "loss": 2.25})
    writer.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.25}]


def test_disabled_writer_creates_nothing(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", enabled=False)
    writer.write({"step": 1})
    writer.close()
    assert not (tmp_path / "metrics.jsonl").exists() and not writer.enabled
