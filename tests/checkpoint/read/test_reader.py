"""Reading DeepSpeed checkpoints with weights_only=True, checked against DeepSpeed's own
reconstruction (zero_to_fp32, which unpickles freely: used here as the reference only)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from modtrain.checkpoint.format import MANIFEST
from modtrain.checkpoint.read.reader import read_checkpoint
from modtrain.errors import ModtrainError
from tests.inference.conftest import train_run
from tests.train.helpers import deepspeed_launcher


def _deepspeed_reference(run: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"))


def _assert_same(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        assert ours[name].dtype == torch.float32
        assert torch.equal(ours[name], tensor.float()), name


@pytest.mark.parametrize("run_name,stage", [("mod_run", 1), ("dense_run", 3)])
def test_zero_merge_equals_deepspeed(request, run_name, stage):
    run = request.getfixturevalue(run_name)
    ckpt = read_checkpoint(run)
    assert (ckpt.zero_stage, ckpt.data_parallel, ckpt.step) == (stage, 1, 4)
    assert ckpt.config["model"]["hidden_size"] == 32
    _assert_same(ckpt.tensors, _deepspeed_reference(run))


def test_every_load_is_weights_only(monkeypatch, mod_run, dense_run):
    calls = []
    real_load = torch.load

    def checked_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", checked_load)
    read_checkpoint(mod_run)
    read_checkpoint(dense_run)
    assert len(calls) >= 4 and all(w is True for w in calls), calls


def _mark(path: str) -> None:
    Path(path).write_text("code ran")


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


def test_pickled_code_is_refused_and_never_runs(tmp_path, mod_run):
    tag = tmp_path / "step_00000004"
    shutil.copytree(mod_run / "checkpoints" / "step_00000004", tag)
    marker = tmp_path / "ran.txt"
    optim = next(tag.glob("*optim_states.pt"))
    state = torch.load(optim, weights_only=False)
    state["extra"] = _Payload(str(marker))
    torch.save(state, optim)
    with pytest.raises(ModtrainError, match="will not unpickle"):
        read_checkpoint(tag)
    assert not marker.exists()


def test_config_falls_back_to_deepspeed_client_state(tmp_path, mod_run):
    tag = tmp_path / "step_00000004"
    shutil.copytree(mod_run / "checkpoints" / "step_00000004", tag)
    expected = json.loads((tag / "modtrain.json").read_text())
    (tag / "modtrain.json").unlink()
    (tag / MANIFEST).unlink()  # such checkpoints predate checksums too
    ckpt = read_checkpoint(tag)
    assert ckpt.config == expected["config"] and ckpt.step == expected["step"]


def test_missing_partition_is_reported(tmp_path, mod_run):
    tag = tmp_path / "step_00000004"
    shutil.copytree(mod_run / "checkpoints" / "step_00000004", tag)
    optim = next(tag.glob("*optim_states.pt"))
    optim.rename(optim.with_name(optim.name.replace("rank_0", "rank_1")))
    shutil.copy(optim.with_name(optim.name.replace("rank_0", "rank_1")), optim)
    (tag / MANIFEST).unlink()  # the checksums would report the renamed file first
    with pytest.raises(ModtrainError, match="ZeRO partitions"):
        read_checkpoint(tag)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ModtrainError, match="holds no modtrain checkpoint"):
        read_checkpoint(tmp_path)


@pytest.mark.slow
def test_two_rank_zero3_partitions_merge_like_deepspeed(tmp_path, char_store, char_tokenizer):
    """ZeRO-3 on 2 gloo ranks: every parameter is split across the ranks, with padding."""
    run = train_run(tmp_path / "dp2", char_store, char_tokenizer, "train.zero_stage=3",
                    "model.tie_embeddings=false", "train.micro_batch_size=2",
                    launcher=deepspeed_launcher())
    ckpt = read_checkpoint(run)
    assert (ckpt.zero_stage, ckpt.data_parallel) == (3, 2)
    _assert_same(ckpt.tensors, _deepspeed_reference(run))


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["parallel.tensor=2"], ["parallel.pipeline=2"]],
                         ids=["tp2", "pp2"])
def test_model_parallel_shards_merge_into_the_one_process_weights(
    tmp_path, char_store, char_tokenizer, layout
):
    """TP=2 / PP=2 and one process train to the same weights (tests/parallel); merged, the
    checkpoints must agree."""
    from tests.train.helpers import deepspeed_command, run, single_command, tiny_config

    common = ["train.steps=3", "model.vocab_multiple=2", "model.num_heads=2",
              "train.micro_batch_size=4"]
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "one"), *common))
    run(deepspeed_command(tiny_config(tmp_path, char_store, char_tokenizer, "two"), *common,
                          *layout))
    one, two = read_checkpoint(tmp_path / "one"), read_checkpoint(tmp_path / "two")
    assert one.tensors.keys() == two.tensors.keys()
    worst = max(float((one.tensors[k] - two.tensors[k]).detach().abs().max()) for k in one.tensors)
    print(f"{layout[0]} checkpoint merged vs one process after 3 steps: max |diff| {worst:.2e}")
    assert worst < 1e-5
