"""On one tensor rank, modtrain's linears are megatron-core's with torch's linear inside."""

from __future__ import annotations

import pytest
import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from modtrain.config import load_config
from modtrain.model.layer_spec import transformer_config
from modtrain.model.linear import ColumnLinear, RowLinear

S, B, IN, OUT = 5, 3, 16, 24


def _pair(plain_cls, megatron_cls, bias: bool, skip_bias_add: bool, **kwargs):
    tc = transformer_config(load_config(None, ["model.vocab_size=67"]).model)
    torch.manual_seed(0)
    plain = plain_cls(IN, OUT, config=tc, init_method=torch.nn.init.normal_, bias=bias,
                      skip_bias_add=skip_bias_add, **kwargs)
    reference = megatron_cls(IN, OUT, config=tc, init_method=torch.nn.init.normal_, bias=bias,
                             skip_bias_add=skip_bias_add, **kwargs)
    with torch.no_grad():  # modtrain initialises parameters itself, megatron-core does not
        for p in plain.parameters():
            p.normal_()
    reference.load_state_dict(plain.state_dict())
    return plain, reference


def _run(layer, x: torch.Tensor, **kwargs):
    x = x.clone().requires_grad_(True)
    out, bias = layer(x, **kwargs)
    total = out if bias is None else out + bias
    total.square().sum().backward()
    return out, bias, x.grad, [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("bias,skip_bias_add", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("kind", ["column", "row"])
def test_one_rank_linear_equals_megatron_core(dist, kind, bias, skip_bias_add):
    classes = ((ColumnLinear, ColumnParallelLinear, {"gather_output": False}) if kind == "column"
               else (RowLinear, RowParallelLinear, {"input_is_parallel": True}))
    plain, reference = _pair(classes[0], classes[1], bias, skip_bias_add, **classes[2])
    assert plain._plain
    x = torch.randn(S, B, IN)
    got, want = _run(plain, x), _run(reference, x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    assert (got[1] is None) == (want[1] is None)  # bias returned apart only when asked
    torch.testing.assert_close(got[2], want[2], rtol=1e-6, atol=1e-6)
    for g, w in zip(got[3], want[3], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_column_linear_uses_a_supplied_weight(dist):
    """The tied output layer owns no weight and is called with the embedding's."""
    tc = transformer_config(load_config(None, ["model.vocab_size=67"]).model)
    layer = ColumnLinear(IN, OUT, config=tc, init_method=torch.nn.init.normal_, bias=False,
                         gather_output=False, skip_weight_param_allocation=True)
    weight = torch.randn(OUT, IN)
    x = torch.randn(S, B, IN)
    out, _ = layer(x, weight=weight)
    torch.testing.assert_close(out, x @ weight.t())
