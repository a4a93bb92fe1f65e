"""Hugging Face wrapper of a modtrain Mixture-of-Depths model (shipped in the export).

Load with AutoModelForCausalLM.from_pretrained(EXPORT_DIR, trust_remote_code=True).
A plain forward routes as in training (per-row top-k, not causal); `generate` routes
causally token by token with a compact key/value cache (modtrain_core.DecoderCache).
Limits: no padded batches (every attention_mask entry must be 1), no beam search.
Supported: transformers >= 4.45 and < 6. The cache travels under the name the installed
release uses (`cache` in the 5.x releases that renamed it, `past_key_values` before), so
no release logs a deprecation; forward accepts either name.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_modtrain import ModtrainConfig
from .modtrain_core import ROUTINGS, CoreConfig, DecoderCache, ModtrainDecoder, RMSNorm

_TIED = {"lm_head.weight": "model.embed_tokens.weight"}
_V5 = int(transformers.__version__.split(".")[0]) >= 5
# The cache's keyword in model calls and outputs for this transformers release.
_CACHE = ("cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
          else "past_key_values")


class ModtrainPreTrainedModel(PreTrainedModel):
    config_class = ModtrainConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class ModtrainForCausalLM(ModtrainPreTrainedModel, GenerationMixin):
    _tied_weights_keys = _TIED if _V5 else list(_TIED)

    def __init__(self, config: ModtrainConfig) -> None:
        super().__init__(config)
        self.core_config = CoreConfig.from_dict(config.to_dict())
        self.model = ModtrainDecoder(self.core_config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own cache: routed layers store ragged rows

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: DecoderCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        routing: str | None = None,
        logits_to_keep: int = 0,
        past_key_values: DecoderCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """routing: "topk" (training's routing, the default of a plain call) or "causal".
        cache: a DecoderCache to continue (`past_key_values` is the same, its older name)."""
        cache = cache if cache is not None else past_key_values
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("modtrain MoD models do not support padded batches; "
                             "pass sequences of equal length")
        if routing is None:
            routing = "causal" if cache is not None else self.config.mod_routing
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, not {routing!r}")
        if routing == "topk":
            if cache is not None:
                raise ValueError("a cache needs routing='causal' (top-k is not causal)")
            use_cache = False
        elif use_cache and cache is None:
            weight = self.model.embed_tokens.weight
            cache = DecoderCache(self.core_config, input_ids.shape[0], weight.dtype, weight.device)
        hidden = self.model(input_ids, routing, cache if use_cache else None)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return CausalLMOutputWithPast(loss=loss, logits=logits,
                                      **{_CACHE: cache if use_cache else None})

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor,
                                      cache: DecoderCache | None = None,
                                      attention_mask: torch.Tensor | None = None,
                                      use_cache: bool | None = None,
                                      past_key_values: DecoderCache | None = None,
                                      **kwargs) -> dict:
        # Written out rather than inherited: the base version differs across transformers
        # releases and knows nothing of this cache. `generate` passes the cache as `cache`
        # or `past_key_values`, whichever its release uses.
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            input_ids = input_ids[:, cache.get_seq_length():]
        return {"input_ids": input_ids, _CACHE: cache, "attention_mask": attention_mask,
                "use_cache": use_cache, "routing": "causal"}  # sampling must not look ahead
