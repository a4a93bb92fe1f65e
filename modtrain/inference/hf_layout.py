"""The Hugging Face layout of an export: config.json fields and tensor names.

A dense model is a Llama checkpoint. A MoD model uses the same names and fields plus its
routers (`model.layers.N.router.*`) and `mod_*` fields, with modelling code shipped in the
export (`auto_map`). The training model's fused tensors are split:
- megatron's linear_qkv rows are grouped per query group as [q heads of the group, k, v]
  (head_dim rows each; with no GQA, one group per head: [q_h, k_h, v_h]);
- linear_fc1 rows are [gate; up] (megatron's SwiGLU chunks its output in two).
Vocabulary rows added as padding (model.vocab_multiple) are dropped: the export's
vocabulary is the tokenizer's.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from modtrain.config import config_from_dict
from modtrain.config.schema import ModelConfig
from modtrain.errors import ModtrainError

EXPORT_FORMAT = "modtrain.export"
EXPORT_VERSION = 2
MOD_MODEL_TYPE = "modtrain_mod"
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def model_config(model: dict[str, Any]) -> ModelConfig:
    """The training config's model section, validated on its own."""
    return config_from_dict({"model": model, "data": {"seq_length": model["max_seq_length"]}}
                            ).model


def hf_config(model: dict[str, Any], dtype: str, step: int, eos_id: int | None) -> dict[str, Any]:
    m = model_config(model)
    head_dim = m.hidden_size // m.num_heads
    routed = m.routed_layer_ids
    config: dict[str, Any] = {
        "architectures": ["ModtrainForCausalLM" if routed else "LlamaForCausalLM"],
        "model_type": MOD_MODEL_TYPE if routed else "llama",
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
        # transformers 4.x reads rope_theta, 5.x rope_parameters.
        "rope_theta": m.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_base},
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
    if routed:
        config.update({
            "auto_map": {
                "AutoConfig": "configuration_modtrain.ModtrainConfig",
                "AutoModelForCausalLM": "modeling_modtrain.ModtrainForCausalLM",
            },
            "mod_routed_layers": routed,
            "mod_capacity": m.mod.capacity,
            "mod_predictor_hidden": m.mod.predictor_hidden if m.mod.predictor else 0,
            "mod_inference_routing": m.mod.inference_routing,
            "mod_routing": "topk",
        })
    config["modtrain"] = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
                          "step": step, "model": model}
    return config


def _split_qkv(w: torch.Tensor, heads: int, groups: int, head_dim: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    per_group = heads // groups
    w = w.view(groups, (per_group + 2) * head_dim, -1)
    q, k, v = w.split([per_group * head_dim, head_dim, head_dim], dim=1)
    hidden = w.shape[-1]
    return (q.reshape(heads * head_dim, hidden), k.reshape(groups * head_dim, hidden),
            v.reshape(groups * head_dim, hidden))


_LAYER = re.compile(r"blocks\.(\d+)\.(.+)")
_SIMPLE = {
    "layer.input_layernorm.weight": "input_layernorm.weight",
    "layer.pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "layer.self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "layer.mlp.linear_fc2.weight": "mlp.down_proj.weight",
    "router.proj.weight": "router.proj.weight",
    "router.predictor.0.weight": "router.predictor.0.weight",
    "router.predictor.0.bias": "router.predictor.0.bias",
    "router.predictor.2.weight": "router.predictor.2.weight",
    "router.predictor.2.bias": "router.predictor.2.bias",
}


def to_hf_tensors(tensors: dict[str, torch.Tensor], model: dict[str, Any]
                  ) -> dict[str, torch.Tensor]:
    """Training state dict -> export tensors. Every training tensor must map somewhere."""
    m = model_config(model)
    heads, head_dim = m.num_heads, m.hidden_size // m.num_heads
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name == "embedding.weight":  # rows past vocab_size pad the vocabulary for TP: drop
            out["model.embed_tokens.weight"] = t[: m.vocab_size]
        elif name == "final_norm.weight":
            out["model.norm.weight"] = t
        elif name == "output_layer.weight":
            out["lm_head.weight"] = t[: m.vocab_size]
        elif (match := _LAYER.fullmatch(name)) is None:
            raise ModtrainError(f"checkpoint tensor {name!r} has no place in the export")
        else:
            prefix, rest = f"model.layers.{match.group(1)}.", match.group(2)
            if rest == "layer.self_attention.linear_qkv.weight":
                q, k, v = _split_qkv(t, heads, heads, head_dim)
                out.update({prefix + "self_attn.q_proj.weight": q,
                            prefix + "self_attn.k_proj.weight": k,
                            prefix + "self_attn.v_proj.weight": v})
            elif rest == "layer.mlp.linear_fc1.weight":
                gate, up = t.chunk(2, dim=0)
                out.update({prefix + "mlp.gate_proj.weight": gate,
                            prefix + "mlp.up_proj.weight": up})
            elif rest in _SIMPLE:
                out[prefix + _SIMPLE[rest]] = t
            else:
                raise ModtrainError(f"checkpoint tensor {name!r} has no place in the export")
    _check_complete(out, m)
    return {k: v.contiguous() for k, v in out.items()}


def expected_names(m: ModelConfig) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not m.tie_embeddings:
        names.add("lm_head.weight")
    for i in range(m.num_layers):
        p = f"model.layers.{i}."
        names |= {p + s for s in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                  "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                  "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                  "mlp.down_proj.weight")}
        if i in m.routed_layer_ids:
            names.add(p + "router.proj.weight")
            if m.mod.predictor:
                names |= {p + f"router.predictor.{j}.{s}" for j in (0, 2)
                          for s in ("weight", "bias")}
    return names


def _check_complete(out: dict[str, torch.Tensor], m: ModelConfig) -> None:
    missing = expected_names(m) - set(out)
    extra = set(out) - expected_names(m)
    if missing or extra:
        raise ModtrainError(
            f"checkpoint tensors do not match its config: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(extra)[:3]}; was it written by another modtrain version?"
        )
