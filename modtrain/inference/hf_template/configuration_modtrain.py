"""Hugging Face configuration of a modtrain Mixture-of-Depths / Mixture-of-Experts model
(shipped in the export)."""

from __future__ import annotations

from transformers import PretrainedConfig


class ModtrainConfig(PretrainedConfig):
    """Llama's fields plus the Mixture-of-Depths ones (mod_*) and the experts' (moe_*)."""

    model_type = "modtrain_mod"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 128,
        intermediate_size: int = 352,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 64,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        rope_parameters: dict | None = None,
        hidden_act: str = "silu",
        initializer_range: float = 0.02,
        mod_routed_layers: list[int] | None = None,
        mod_capacity: float = 0.125,
        mod_predictor_hidden: int = 0,
        mod_inference_routing: str = "predictor",
        mod_routing: str = "topk",
        moe_layers: list[int] | None = None,
        moe_num_experts: int = 0,
        moe_noop_experts: int = 0,
        moe_top_k: int = 1,
        moe_intermediate_size: int = 0,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        # {"rope_type": "default" | "linear", "rope_theta", "factor"}; set before the parent's
        # __init__ so that transformers folds a legacy rope_scaling key into it.
        self.rope_parameters = rope_parameters or {"rope_type": "default",
                                                   "rope_theta": rope_theta}
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        # 0-based indices of the routed layers; the others are dense.
        self.mod_routed_layers = list(mod_routed_layers or [])
        self.mod_capacity = mod_capacity
        self.mod_predictor_hidden = mod_predictor_hidden
        # Causal decision used when generating: "predictor" or "router" (sigmoid(r) > 0.5).
        self.mod_inference_routing = mod_inference_routing
        # Routing of a plain forward: "topk" (as trained) or "causal".
        self.mod_routing = mod_routing
        # 0-based indices of the layers whose MLP is a Mixture-of-Experts (moe_num_experts
        # SwiGLU experts of width moe_intermediate_size, moe_noop_experts no-op experts).
        self.moe_layers = list(moe_layers or [])
        self.moe_num_experts = moe_num_experts
        self.moe_noop_experts = moe_noop_experts
        self.moe_top_k = moe_top_k
        self.moe_intermediate_size = moe_intermediate_size
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
