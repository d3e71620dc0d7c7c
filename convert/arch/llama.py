"""The llama family: LLaMA 1/2, Llama 3/3.1/3.2, Mistral, SmolLM -> GGUF ``llama``."""

from __future__ import annotations

import gguf
import numpy as np

from . import Architecture, permute_rope_rows, register


@register("LlamaForCausalLM", "MistralForCausalLM")
class Llama(Architecture):
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def rearranges(self, gguf_name: str) -> bool:
        return gguf_name.endswith(("attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias"))

    def transform(self, gguf_name: str, data: np.ndarray, dtype: str) -> np.ndarray:
        # llama.cpp's llama rope rotates interleaved pairs; HF checkpoints store rotate-half rows
        if gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            return permute_rope_rows(data, self.n_head)
        if gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            return permute_rope_rows(data, self.n_head_kv)
        return data

    def extra_tensors(self) -> dict[str, np.ndarray]:
        if self.rope_scaling and self.rope_scaling.get("rope_type") == "llama3":
            return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": self.llama3_rope_freqs()}
        return {}
