"""megatron-core TransformerConfig and layer spec for modtrain's decoder blocks.

RMSNorm, RoPE (applied by megatron's SelfAttention), SwiGLU MLP, no biases. The MLP slot
is a parameter: expert layers put a Mixture-of-Experts there (model/experts.py).
"""

from __future__ import annotations

import logging

import torch.nn.functional as F
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
)

from modtrain.config.schema import ModelConfig
from modtrain.model.attention import SDPACoreAttention
from modtrain.model.experts import ExpertMLP, ExpertSlice
from modtrain.model.linear import ColumnLinear, RowLinear
from modtrain.model.sequence_parallel import SequenceParallelRMSNorm


def transformer_config(model: ModelConfig, tensor_size: int = 1,
                       sequence_parallel: bool = False) -> TransformerConfig:
    """Translate modtrain's model section into megatron-core's TransformerConfig.

    Parameters are fp32: under bf16/fp16 training DeepSpeed casts the module and keeps
    fp32 master weights itself (train.precision reaches only its config).
    `sequence_parallel`: norms, residuals and dropout run on a sequence shard of each
    tensor rank (parallel.sequence_parallel; needs `tensor_size` > 1)."""
    return TransformerConfig(
        tensor_model_parallel_size=tensor_size,
        sequence_parallel=sequence_parallel,
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_heads,
        ffn_hidden_size=model.ffn_size,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=model.dropout,
        attention_dropout=model.dropout,
        init_method_std=model.init_std,
        # Parameters are allocated with no device, so on the device of the context they are
        # built in (the engine's: the rank's device; under ZeRO-3 deepspeed.zero.Init, which
        # also keeps only this rank's partition); their values come from
        # modtrain.model.init, which draws layout-independent weights (any TP size starts
        # from the same model).
        use_cpu_initialization=True,
        perform_initialization=False,
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )


class Norm:
    """The norm slot: torch's RMSNorm (megatron-core's WrappedTorchNorm), or under sequence
    parallelism the same norm with its weight's gradient summed over the tensor group."""

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_):
        if config.sequence_parallel:
            return SequenceParallelRMSNorm(hidden_size, eps)
        return WrappedTorchNorm(config=config, hidden_size=hidden_size, eps=eps)


def mlp_spec() -> ModuleSpec:
    return ModuleSpec(
        module=MLP,
        submodules=MLPSubmodules(linear_fc1=ColumnLinear, linear_fc2=RowLinear),
    )


def _not_unknown_mlp(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Unknown MLP type")


def expert_mlp_spec(model: ModelConfig, expert: ExpertSlice) -> ModuleSpec:
    """The MLP slot holding a Mixture-of-Experts (model.moe) for this expert slice."""
    # megatron-core warns once per layer that it passes no process groups to an MLP class it
    # does not know; ExpertMLP takes its groups from DeepSpeed, so the warning is noise.
    megatron_layer_log = logging.getLogger("megatron.core.transformer.transformer_layer")
    if _not_unknown_mlp not in megatron_layer_log.filters:
        megatron_layer_log.addFilter(_not_unknown_mlp)
    return ModuleSpec(module=ExpertMLP, params={"model": model, "expert": expert})


def decoder_layer_spec(mlp: ModuleSpec | None = None) -> ModuleSpec:
    """A pre-norm decoder layer; `mlp` replaces the dense SwiGLU MLP (e.g. with an MoE)."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=Norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnLinear,
                    core_attention=SDPACoreAttention,
                    linear_proj=RowLinear,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=Norm,
            mlp=mlp or mlp_spec(),
            mlp_bda=get_bias_dropout_add,
        ),
    )
