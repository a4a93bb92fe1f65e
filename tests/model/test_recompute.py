"""Recomputing blocks in backward changes no loss or gradient and keeps fewer activations; a
routed block recomputes its k routed tokens with the routing of the forward pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modtrain.config.schema import MoDConfig, ModelConfig, MoEConfig, TrainConfig
from modtrain.model.gpt import GPT
from modtrain.model.rope import Rope
from modtrain.model.router import tokens_per_row
from tests.conftest import cli_env
from tests.model.saved_bytes import saved_bytes as counted_saved_bytes
from tests.parallel.test_tensor_parallel import MODEL
from tests.train.helpers import free_port

SEQ, BATCH, HIDDEN = 32, 2, 32


def _config(kind: str, dropout: float = 0.1) -> ModelConfig:
    """kind: dense, moe, mod-CAPACITY or mode-CAPACITY (MoD in front of expert MLPs)."""
    routed = kind.startswith("mod")
    mod = MoDConfig(enabled=routed, capacity=float(kind.split("-")[1]) if routed else 0.125)
    return ModelConfig(vocab_size=64, num_layers=2, hidden_size=HIDDEN, num_heads=2,
                       max_seq_length=SEQ, dropout=dropout, mod=mod,
                       moe=MoEConfig(enabled=kind == "moe" or kind.startswith("mode"),
                                     num_experts=2))


def _loss_and_grads(config: ModelConfig, recompute: list[int], tokens: torch.Tensor,
                    mode: str = "full"):
    model = GPT(config, seed=5, recompute_layers=recompute, recompute=mode)
    torch.manual_seed(11)  # the same dropout masks in both runs, if recomputation replays them
    out = model(tokens[:, :-1], tokens[:, 1:])
    out.loss.backward()
    return model, out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["dense", "mod-0.125", "mod-0.5", "moe"])
def test_full_recompute_gives_the_same_loss_and_gradients(dist, kind):
    config = _config(kind)
    tokens = torch.randint(0, 64, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(0))
    _, loss, grads = _loss_and_grads(config, [], tokens)
    model, loss_r, grads_r = _loss_and_grads(config, [0, 1], tokens)
    assert all(block.recompute == "full" for block in model.blocks)
    torch.testing.assert_close(loss_r, loss, rtol=1e-6, atol=0)
    for name, grad in grads.items():
        error = (grads_r[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-30)
        assert error <= 1e-6, (name, error)


def _routed_forward(block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input, output, aux loss, top-k index) of a routed block's forward on a random input
    (the seed fixed for dropout, so the recompute must replay it)."""
    x = torch.randn(SEQ, BATCH, HIDDEN, requires_grad=True)
    rope = Rope.table(SEQ, HIDDEN // 2, 10000.0).window(0, SEQ)
    torch.manual_seed(3)
    out, aux, _ = block(x, rope)
    return x, out, aux, block.last_index


def test_routed_block_recomputes_the_forward_routing_on_k_tokens(dist):
    model = GPT(_config("mod-0.125"), seed=5, recompute_layers=[1])
    block = model.blocks[1]
    assert block.routed
    seen: list[torch.Tensor] = []  # what the block's layer receives: forward, then recompute
    block.layer.input_layernorm.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    router_calls: list[torch.Tensor] = []
    block.router.register_forward_pre_hook(lambda m, a: router_calls.append(a[0]))
    x, out, aux, index = _routed_forward(block)
    k = tokens_per_row(0.125, SEQ)
    assert index.shape == (k, BATCH)
    assert len(seen) == 1
    (out.sum() + aux).backward()
    assert len(seen) == 2  # recomputed once in backward, on the same k tokens at the index
    forward_in, recompute_in = seen
    assert recompute_in.shape == (k, BATCH, HIDDEN)
    gathered = x.detach().gather(0, index.unsqueeze(-1).expand(-1, -1, HIDDEN))
    assert torch.equal(forward_in, gathered) and torch.equal(recompute_in, gathered)


def saved_activation_bytes(model: GPT, x: torch.Tensor, rope: Rope) -> list[int]:
    """Bytes each block keeps for backward (what autograd saves, weights left out; a
    checkpoint's saved input counts as well)."""
    per_block = []
    for block in model.blocks:
        with counted_saved_bytes(model) as seen:
            x = block(x, rope)[0]
        per_block.append(sum(seen.values()))
    return per_block


@pytest.mark.parametrize("capacity", [0.125, 0.5])
def test_recompute_keeps_the_block_inputs_and_routed_blocks_keep_capacity_times_dense(
        dist, capacity):
    config = _config(f"mod-{capacity}", dropout=0.0)  # block 0 dense, block 1 routed
    config.mod.predictor = False  # its activations cover every token, outside the block
    x = torch.randn(SEQ, BATCH, HIDDEN, requires_grad=True)
    rope = Rope.table(SEQ, HIDDEN // 2, 10000.0).window(0, SEQ)
    dense, routed = saved_activation_bytes(GPT(config, seed=5), x, rope)
    dense_r, routed_r = saved_activation_bytes(GPT(config, seed=5, recompute_layers=[0, 1]),
                                               x, rope)
    block_input = x.numel() * x.element_size()
    # Without recomputation a routed block keeps the router's input and ~capacity x dense.
    assert abs((routed - block_input) / dense - capacity) < 0.05, (routed, dense)
    assert dense_r == block_input  # the dense block keeps its input only
    # The routed block keeps its input, the k routed tokens and their delta, and small
    # [S, B] / [k, B] routing tensors (logits, indices: a few bytes a token).
    assert routed_r <= (1 + 2 * capacity) * block_input + 8 * 8 * SEQ * BATCH, routed_r


def _assert_same(loss, grads, loss_r, grads_r) -> None:
    torch.testing.assert_close(loss_r, loss, rtol=1e-6, atol=0)
    for name, grad in grads.items():
        error = (grads_r[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-30)
        assert error <= 1e-6, (name, error)


@pytest.mark.parametrize("kind", ["dense", "mod-0.125", "mod-0.5", "moe", "mode-0.125",
                                  "mode-0.5"])
def test_selective_recompute_gives_the_same_loss_and_gradients_as_none_and_full(dist, kind):
    config = _config(kind)
    tokens = torch.randint(0, 64, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(0))
    _, loss, grads = _loss_and_grads(config, [], tokens)
    model, loss_s, grads_s = _loss_and_grads(config, [0, 1], tokens, "selective")
    assert all(block.recompute == "selective" for block in model.blocks)
    _assert_same(loss, grads, loss_s, grads_s)
    _, loss_f, grads_f = _loss_and_grads(config, [0, 1], tokens, "full")
    _assert_same(loss_f, grads_f, loss_s, grads_s)


def test_selective_recompute_reruns_core_attention_on_the_forward_routing(dist):
    model = GPT(_config("mod-0.125"), seed=5, recompute_layers=[1], recompute="selective")
    block = model.blocks[1]
    normed: list[torch.Tensor] = []  # the block's layer input: routed tokens, once
    block.layer.input_layernorm.register_forward_pre_hook(lambda m, a: normed.append(a[0]))
    core: list[tuple[torch.Tensor, ...]] = []  # core attention's q, k, v: forward, rerun
    block.layer.self_attention.core_attention.register_forward_pre_hook(
        lambda m, a: core.append(tuple(t.detach().clone() for t in a[:3])))
    x, out, aux, index = _routed_forward(block)
    k = tokens_per_row(0.125, SEQ)
    assert index.shape == (k, BATCH) and len(core) == 1
    (out.sum() + aux).backward()
    assert len(normed) == 1  # the projections are not rerun, nor the routing
    assert len(core) == 2  # core attention is, on the same k tokens at the same positions
    gathered = x.detach().gather(0, index.unsqueeze(-1).expand(-1, -1, HIDDEN))
    assert torch.equal(normed[0], gathered)
    assert core[0][0].shape[0] == k
    for forward, rerun in zip(*core, strict=True):
        assert torch.equal(forward, rerun)


@pytest.mark.parametrize("kind", ["dense", "mod-0.125", "moe"])
def test_selective_keeps_less_than_none_and_full_only_the_block_inputs(dist, kind):
    config = _config(kind, dropout=0.0)
    config.mod.predictor = False
    x = torch.randn(SEQ, BATCH, HIDDEN, requires_grad=True)
    rope = Rope.table(SEQ, HIDDEN // 2, 10000.0).window(0, SEQ)
    none, selective, full = (
        saved_activation_bytes(GPT(config, seed=5, recompute_layers=layers, recompute=mode),
                               x, rope)
        for mode, layers in (("full", []), ("selective", [0, 1]), ("full", [0, 1])))
    block_input = x.numel() * x.element_size()
    for n, s, f in zip(none, selective, full, strict=True):
        assert f < s < n, (f, s, n)
    assert full[0] == block_input  # block 0 is dense (an expert layer in moe)
    # Selective drops at least the rotated queries and keys, attention's output, and the
    # MLP's activation (an input-sized [S, B, ffn] tensor when it is dense).
    assert none[0] - selective[0] >= 3 * block_input, (none, selective)


@pytest.mark.slow
def test_tp2_recompute_modes_give_the_same_loss_and_gradients(tmp_path):
    """Under TP=2 with attention dropout (drawn from the tensor-parallel stream inside the
    rerun part), none, selective and full agree on every rank."""
    worker = Path(__file__).with_name("recompute_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(worker),
         str(tmp_path / "rank"), *MODEL, "model.dropout=0.2", "parallel.tensor=2",
         "model.mod.enabled=true", "model.mod.capacity=0.5"],
        env={**cli_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        none = saved["none"]
        for mode in ("selective", "full"):
            _assert_same(none["loss"], none["grads"], saved[mode]["loss"],
                         saved[mode]["grads"])


def test_recompute_layer_ids():
    assert TrainConfig().recompute_layer_ids(4) == []
    assert TrainConfig(recompute="full").recompute_layer_ids(4) == [0, 1, 2, 3]
    assert TrainConfig(recompute="full", recompute_layers="every_2").recompute_layer_ids(5) == [
        0, 2, 4]
    assert TrainConfig(recompute="full", recompute_layers=[3, 1]).recompute_layer_ids(4) == [1, 3]


def _step_records(run_dir: Path) -> list[tuple[float, float]]:
    import json

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [(r["loss"], r["grad_norm"]) for r in records if "grad_norm" in r]


@pytest.mark.slow
def test_zero3_two_ranks_train_alike_under_every_recompute_mode(tmp_path, char_store,
                                                                char_tokenizer):
    """The DeepSpeed engine, ZeRO-3 on 2 gloo ranks, MoD with dropout: 3 steps under none,
    selective and full log the same losses and gradient norms."""
    from tests.train.helpers import deepspeed_command, run, tiny_config

    logged = {}
    for mode in ("none", "selective", "full"):
        config = tiny_config(tmp_path, char_store, char_tokenizer, mode, micro=4, steps=3)
        run(deepspeed_command(config, "train.zero_stage=3", "model.dropout=0.1",
                              f"train.recompute={mode}"))
        logged[mode] = _step_records(tmp_path / mode)
    assert len(logged["none"]) == 3
    for mode in ("selective", "full"):
        for (loss, norm), (loss_r, norm_r) in zip(logged["none"], logged[mode], strict=True):
            assert loss_r == pytest.approx(loss, rel=1e-6, abs=0)
            assert norm_r == pytest.approx(norm, rel=1e-5, abs=0)
