"""Qwen3 -> GGUF ``qwen3`` (NEOX rope, per-head RMS norms on Q and K, explicit head_dim)."""

from __future__ import annotations

import gguf

from . import Architecture, register


@register("Qwen3ForCausalLM")
class Qwen3(Architecture):
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    required_block_tensors = Architecture.required_block_tensors + ("attn_q_norm.weight", "attn_k_norm.weight")

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        # llama.cpp reads key/value length for qwen3 whatever the ratio
        if self.head_dim == self.n_embd // self.n_head:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
