"""GLM-4 (``Glm4ForCausalLM``, GLM-4-0414 / GLM-Z1) -> GGUF ``glm4``.

Facts (llama.cpp's ``glm4``): RMS norms before and after attention and before and after the MLP
(``post_self_attn_layernorm`` -> ``post_attention_norm``, ``post_mlp_layernorm`` -> ``post_ffw_norm``; transformers'
``post_attention_layernorm`` is the pre-MLP norm, ``ffn_norm``), Q/K/V biases, one fused ``gate_up_proj``
(``ffn_up``, gate half first), and partial rotary (``partial_rotary_factor``, 0.5 by default) with
interleaved pairs: transformers' GLM rotates adjacent pairs already, as llama.cpp's normal rope does, so Q/K rows
stay as stored.
"""

from __future__ import annotations

import gguf

from ...errors import ForgeError
from . import Architecture, register
from .phi3 import rope_params, rotary_dims


@register("Glm4ForCausalLM")
class Glm4(Architecture):
    gguf_arch = gguf.MODEL_ARCH.GLM4
    required_block_tensors = (
        "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "post_attention_norm.weight", "ffn_norm.weight", "ffn_up.weight", "ffn_down.weight", "post_ffw_norm.weight",
    )

    def __init__(self, config: dict):
        super().__init__(config)
        params = rope_params(config)
        params.setdefault("partial_rotary_factor", 0.5)
        if params.get("partial_rotary_factor") is None:
            params["partial_rotary_factor"] = 0.5
        self.n_rot = rotary_dims(self, params)
        if "mrope_section" in params:
            raise ForgeError("config.json: M-RoPE (mrope_section) is the GLM-4V vision model; convert its text "
                             "model only")
        act = config.get("hidden_act") or "silu"
        if act != "silu":
            raise ForgeError(f"config.json: hidden_act {act!r}; llama.cpp's glm4 computes SwiGLU (silu)")

    def expected_shape(self, gguf_name: str) -> tuple[tuple[int, ...], str] | None:
        if gguf_name.endswith("ffn_up.weight"):
            return (2 * self.n_ff, self.n_embd), "2 x intermediate_size, hidden_size"
        return super().expected_shape(gguf_name)

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        self.add_common_hparams(w)
        w.add_rope_dimension_count(self.n_rot)
        if self.head_dim != self.n_embd // self.n_head:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        self.add_rope_scaling(w)
