"""Evaluation hook: the validation loss of a blend, and of each of its sources."""

from __future__ import annotations

import json

import pytest

from modtrain.config import load_config
from modtrain.data.read.loading import build_training_data
from modtrain.train.inputs import check_inputs
from tests.train.helpers import tiny_config


@pytest.mark.slow
def test_a_blend_reports_each_sources_validation_loss(tmp_path, dist, char_store,
                                                       paragraph_store, char_tokenizer):
    from modtrain.train.trainer import train

    path = tiny_config(tmp_path, char_store, char_tokenizer, "blend", steps=2)
    config = load_config(path, [f"data.stores=[{char_store},{paragraph_store}]",
                                "data.weights=[1,1]", "train.eval_batches=1"])
    result = train(config)
    records = [json.loads(line) for line in
               (tmp_path / "blend" / "metrics.jsonl").read_text().splitlines()]
    (val,) = [r for r in records if "val_loss" in r]
    assert set(val) == {"step", "val_loss", "val_loss/s", "val_loss/paragraphs"}
    _, windows = build_training_data(config, check_inputs(config), 0, 1, log=lambda _: None)
    (_, a), (_, b) = windows.sources()
    mean = (val["val_loss/s"] * len(a) + val["val_loss/paragraphs"] * len(b)) / (len(a) + len(b))
    assert val["val_loss"] == pytest.approx(mean, rel=1e-12)
    assert val["val_loss/s"] != val["val_loss/paragraphs"]
    assert result.val_loss == val["val_loss"]


@pytest.mark.slow
def test_one_store_reports_one_validation_loss(tmp_path, dist, char_store, char_tokenizer):
    from modtrain.train.trainer import train

    config = load_config(tiny_config(tmp_path, char_store, char_tokenizer, "one", steps=1))
    train(config)
    records = [json.loads(line) for line in
               (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in records if "val_loss" in r] == [["step", "val_loss"]]
