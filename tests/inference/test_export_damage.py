"""A tampered config.json or a truncated model.safetensors is refused in one line before
the model is built; a size that config.json lies about allocates nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from modtrain.errors import ModtrainError
from modtrain.inference.export import load_export


def _tampered(tmp_path, export, **changes):
    out = tmp_path / "e"
    shutil.copytree(export, out)
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("changes,message", [
    ({"hidden_size": "64"}, "hidden_size is '64', not int"),
    ({"num_hidden_layers": None}, "num_hidden_layers is None, not int"),
    ({"mod_routed_layers": "all"}, r"mod_routed_layers is \['a', 'l', 'l'\], not list"),
    ({"vocab_size": 10**10}, r"model.embed_tokens.weight is \(\d+, \d+\) in model.safetensors, "
                             r"config.json implies \(10000000000, "),
    ({"intermediate_size": 10**9}, r"config.json implies \(\d+, 1000000000\)"),
    ({"num_hidden_layers": 10**9}, "does not fit model.safetensors"),
    ({"moe_num_experts": 10**9}, "does not fit model.safetensors"),
])
def test_a_tampered_config_is_one_line_and_allocates_nothing(tmp_path, mod_export, changes,
                                                              message):
    with pytest.raises(ModtrainError, match=message):
        load_export(_tampered(tmp_path, mod_export, **changes))


def test_a_config_that_is_not_a_mapping_of_fields(tmp_path, mod_export):
    out = _tampered(tmp_path, mod_export)
    config = json.loads((out / "config.json").read_text())
    del config["rms_norm_eps"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModtrainError, match="config.json is damaged .KeyError"):
        load_export(out)


@pytest.mark.parametrize("keep", [4, 100, 0.5])
def test_a_truncated_safetensors_file_is_one_line(tmp_path, mod_export, keep):
    out = _tampered(tmp_path, mod_export)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ModtrainError, match="model.safetensors is damaged or truncated"):
        load_export(out)


def test_convert_with_a_garbage_tokenizer_is_one_line(tmp_path, mod_run):
    from modtrain.inference.export import convert_checkpoint

    garbage = tmp_path / "g.model"
    garbage.write_bytes(b"\x8f not a model \x00" * 8)
    with pytest.raises(ModtrainError, match=r"g\.model is not a SentencePiece model"):
        convert_checkpoint(mod_run, tmp_path / "e", tokenizer=garbage)
    assert not (tmp_path / "e").exists()
