"""Qwen2 / Qwen2.5 -> GGUF ``qwen2`` (NEOX rope: Q/K rows stay as stored; Q/K/V biases)."""

from __future__ import annotations

import gguf

from . import Architecture, register


@register("Qwen2ForCausalLM")
class Qwen2(Architecture):
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    required_block_tensors = Architecture.required_block_tensors + (
        "attn_q.bias", "attn_k.bias", "attn_v.bias",
    )
