"""The megatron-core parts around the decoder blocks, built one way for `GPT` and for the
pipeline layers: the vocab-parallel embedding, the final norm, the output projection."""

from __future__ import annotations

from megatron.core import tensor_parallel
from megatron.core.transformer import TransformerConfig

from modtrain.config.schema import ModelConfig
from modtrain.model.layer_spec import Norm
from modtrain.model.linear import ColumnLinear


def build_embedding(config: ModelConfig, tc: TransformerConfig):
    return tensor_parallel.VocabParallelEmbedding(
        num_embeddings=config.padded_vocab_size, embedding_dim=config.hidden_size,
        init_method=tc.init_method, config=tc,
    )


def build_final_norm(config: ModelConfig, tc: TransformerConfig):
    return Norm(config=tc, hidden_size=config.hidden_size, eps=config.norm_eps)


def build_output_layer(config: ModelConfig, tc: TransformerConfig, tied: bool):
    """Column-parallel projection to the (padded) vocabulary; with `tied`, it owns no weight
    and is called with the embedding's."""
    return ColumnLinear(
        config.hidden_size, config.padded_vocab_size, config=tc, init_method=tc.init_method,
        bias=False, gather_output=False, skip_weight_param_allocation=tied,
    )
