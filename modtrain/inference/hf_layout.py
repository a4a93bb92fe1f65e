"""The Hugging Face layout of an export: config.json fields and tensor names.

A dense model is a Llama checkpoint. A MoD or MoE model uses the same names and fields plus
its routers (`model.layers.N.router.*`) and `mod_*` fields, its experts
(`model.layers.N.mlp.gate`, `model.layers.N.mlp.experts.E.*`) and `moe_*` fields, with
modelling code shipped in the export (`auto_map`). Tensor names, and how fused training
tensors split into them (QKV, SwiGLU gate/up, padded vocabulary rows), come from the
parameter table
(`modtrain/model/param_table.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from modtrain.config import config_from_dict
from modtrain.config.schema import ModelConfig
from modtrain.errors import ModtrainError
from modtrain.model.param_table import hf_parameter_names, hf_tensors
from modtrain.model.rope import scaled_rope

EXPORT_FORMAT = "modtrain.export"
EXPORT_VERSION = 2
MOD_MODEL_TYPE = "modtrain_mod"
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def model_config(model: dict[str, Any]) -> ModelConfig:
    """The training config's model section, validated on its own."""
    return config_from_dict({"model": model, "data": {"seq_length": model["max_seq_length"]}}
                            ).model


def rope_fields(m: ModelConfig) -> dict[str, Any]:
    """config.json's RoPE fields, giving transformers the training model's angles: linear
    scaling as its "linear" rope type (inverse frequencies / factor, the same fp32 maths);
    static NTK as the scaled base, since transformers' "dynamic" type changes the base with
    the sequence length and matches no fixed table."""
    head_dim = m.hidden_size // m.num_heads
    base, divisor = scaled_rope(m.rope_base, head_dim, m.rope_scaling)
    # transformers 4.x reads rope_theta and rope_scaling, 5.x rope_parameters.
    fields: dict[str, Any] = {"rope_theta": base}
    if divisor != 1.0:
        fields["rope_scaling"] = {"rope_type": "linear", "factor": divisor}
        fields["rope_parameters"] = {"rope_type": "linear", "factor": divisor,
                                     "rope_theta": base}
    else:
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": base}
    return fields


def hf_config(model: dict[str, Any], dtype: str, step: int, eos_id: int | None) -> dict[str, Any]:
    m = model_config(model)
    head_dim = m.hidden_size // m.num_heads
    routed, experts = m.routed_layer_ids, m.moe_layer_ids
    remote = bool(routed or experts)  # Llama has neither routers nor experts
    config: dict[str, Any] = {
        "architectures": ["ModtrainForCausalLM" if remote else "LlamaForCausalLM"],
        "model_type": MOD_MODEL_TYPE if remote else "llama",
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": m.max_seq_length,
        "rms_norm_eps": m.norm_eps,
        **rope_fields(m),
        "tie_word_embeddings": m.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": m.init_std,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": DTYPE_NAMES[dtype],
        "dtype": DTYPE_NAMES[dtype],
    }
    if remote:
        config.update({
            "auto_map": {
                "AutoConfig": "configuration_modtrain.ModtrainConfig",
                "AutoModelForCausalLM": "modeling_modtrain.ModtrainForCausalLM",
            },
            "moe_layers": experts,
            "moe_num_experts": m.moe.num_experts if experts else 0,
            "moe_noop_experts": m.moe.noop_experts if experts else 0,
            "moe_top_k": m.moe.top_k,
            "moe_intermediate_size": m.expert_ffn_size if experts else 0,
            "mod_routed_layers": routed,
            "mod_capacity": m.mod.capacity,
            "mod_predictor_hidden": m.mod.predictor_hidden if m.mod.predictor else 0,
            "mod_inference_routing": m.mod.inference_routing,
            "mod_routing": "topk",
        })
    config["modtrain"] = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
                          "step": step, "model": model}
    return config


def to_hf_tensors(tensors: Mapping[str, torch.Tensor], model: dict[str, Any]
                  ) -> dict[str, torch.Tensor]:
    """Training state dict -> export tensors (names and splits from the parameter table).
    Every training tensor must map somewhere, and every export tensor must be filled."""
    m = model_config(model)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        mapped = hf_tensors(name, t, m)
        if not mapped:
            raise ModtrainError(f"checkpoint tensor {name!r} has no place in the export")
        out.update(mapped)
    _check_complete(out, m)
    return {k: v.contiguous() for k, v in out.items()}


def hf_shapes(shapes: Mapping[str, tuple[int, ...]], model: dict[str, Any]
              ) -> dict[str, tuple[int, ...]]:
    """Export tensor names and shapes from the training tensors' shapes alone (the splits
    run on meta tensors), checked as to_hf_tensors checks the tensors."""
    m = model_config(model)
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        mapped = hf_tensors(name, torch.empty(shape, device="meta"), m)
        if not mapped:
            raise ModtrainError(f"checkpoint tensor {name!r} has no place in the export")
        out.update({k: tuple(v.shape) for k, v in mapped.items()})
    _check_complete(out, m)
    return out


def iter_hf_tensors(tensors: Mapping[str, torch.Tensor], model: dict[str, Any]
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """(export name, tensor) of each training tensor in turn, one training tensor read at
    a time (with a lazy mapping, only it is in memory)."""
    m = model_config(model)
    for name in tensors:
        for k, v in hf_tensors(name, tensors[name], m).items():
            yield k, v.contiguous()


def _check_complete(out: Mapping[str, Any], m: ModelConfig) -> None:
    expected = hf_parameter_names(m)
    missing = expected - set(out)
    extra = set(out) - expected
    if missing or extra:
        raise ModtrainError(
            f"checkpoint tensors do not match its config: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(extra)[:3]}; was it written by another modtrain version?"
        )
