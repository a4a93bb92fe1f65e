"""The engine's step hands each row's documents to the model (data.document_mask,
data.reset_positions)."""

from __future__ import annotations

import json

import pytest
import torch

from modtrain.config import load_config
from modtrain.data.read.loading import build_training_data
from modtrain.model import GPT
from modtrain.train.engine import document_split
from modtrain.train.inputs import check_inputs
from tests.train.helpers import tiny_config


def test_no_document_options_no_split(tmp_path, paragraph_store, char_tokenizer):
    config = load_config(tiny_config(tmp_path, paragraph_store, char_tokenizer, "r"))
    assert document_split(config) is None


@pytest.mark.slow
@pytest.mark.parametrize("options", [["data.document_mask=true"],
                                     ["data.reset_positions=true"],
                                     ["data.document_mask=true", "data.reset_positions=true"]])
def test_the_first_step_loss_is_the_models_loss_with_the_rows_documents(
        tmp_path, dist, paragraph_store, char_tokenizer, options):
    from modtrain.train.trainer import train

    path = tiny_config(tmp_path, paragraph_store, char_tokenizer, "docs", steps=1)
    # Weights large enough for attention to be far from uniform, so positions matter.
    options = [*options, "model.init_std=0.2"]
    config = load_config(path, options)
    train(config)
    (first,) = [json.loads(line) for line in
                (tmp_path / "docs" / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in line]
    # The same model, weights and batch, outside the engine: with and without documents.
    fresh = load_config(path, options)
    loader, _ = build_training_data(fresh, check_inputs(fresh), 0, 1, log=lambda _: None)
    (batch,) = loader.next_step()
    tokens = torch.from_numpy(batch)
    x, y = tokens[:, :-1], tokens[:, 1:]
    torch.manual_seed(fresh.run.seed)
    model = GPT(fresh.model, seed=fresh.run.seed).train()
    split = document_split(fresh)
    with torch.no_grad():
        with_documents = model(x, y, documents=split(x)).lm_loss.item()
        without = model(x, y).lm_loss.item()
    assert first["loss"] == pytest.approx(with_documents, rel=1e-6)
    assert abs(with_documents - without) > 1e-3
