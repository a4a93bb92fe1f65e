"""Checks of the user's files before training: documents need the store's EOS."""

from __future__ import annotations

import numpy as np
import pytest

from modtrain.config import load_config
from modtrain.data.tokenizer import Tokenizer
from modtrain.data.write.build import write_store
from modtrain.errors import ModtrainError
from modtrain.train.inputs import check_inputs
from tests.train.helpers import tiny_config


def test_documents_need_the_stores_eos_to_be_the_tokenizers(tmp_path, char_tokenizer):
    tok = Tokenizer(char_tokenizer)
    other_eos = tok.eos_id + 1
    store = write_store(tmp_path / "other_eos.zarr", [np.array([5, 6, other_eos])] * 40,
                        vocab_size=tok.vocab_size, tokenizer_sha256=tok.sha256,
                        eos_id=other_eos, sources=["x"])
    path = tiny_config(tmp_path, store, char_tokenizer, "r")
    check_inputs(load_config(path))  # without documents the EOS id is not used
    with pytest.raises(ModtrainError, match=f"ends its documents with eos_id {other_eos}"):
        check_inputs(load_config(path, ["data.document_mask=true"]))
