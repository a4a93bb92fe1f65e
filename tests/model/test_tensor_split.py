import pytest
import torch

from modtrain.model.tensor_split import merge, partition_dim, shard


@pytest.mark.parametrize("name,dim", [
    ("blocks.0.layer.self_attention.linear_qkv.weight", 0),
    ("blocks.0.layer.mlp.linear_fc1.weight", 0),
    ("blocks.0.layer.self_attention.linear_proj.weight", 1),
    ("blocks.1.layer.mlp.linear_fc2.weight", 1),
    ("embedding.weight", 0),
    ("blocks.1.router.proj.weight", None),
    ("final_norm.weight", None),
])
def test_partition_dims(name, dim):
    assert partition_dim(name) == dim


@pytest.mark.parametrize("name", ["blocks.0.layer.mlp.linear_fc1.weight",
                                  "blocks.0.layer.self_attention.linear_proj.weight"])
@pytest.mark.parametrize("size", [1, 2, 4])
def test_shard_then_merge_is_identity(name, size):
    full = torch.arange(8 * 16, dtype=torch.float32).reshape(8, 16)
    parts = [shard(full, name, r, size) for r in range(size)]
    assert torch.equal(merge(parts, name), full)


def test_gated_fc1_shards_hold_their_gate_and_up_rows():
    gate, up = torch.zeros(4, 3), torch.ones(4, 3)
    part = shard(torch.cat([gate, up]), "blocks.0.layer.mlp.linear_fc1.weight", 1, 2)
    assert torch.equal(part, torch.cat([gate[2:], up[2:]]))
