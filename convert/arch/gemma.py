"""Gemma 2 and Gemma 3 (text) -> GGUF ``gemma2`` / ``gemma3``.

Facts that differ from the llama family:
- RMSNorm scales by ``1 + weight``; llama.cpp expects the ``1 +`` already applied to every norm weight.
- NEOX rope (Q/K rows stay as stored); embeddings are scaled by sqrt(hidden) at run time by llama.cpp.
- Sliding-window attention on some layers (``layer_types`` in the config), with its own rope base.
- llama.cpp derives the attention scale from the layer count (1/sqrt(hidden/heads) for the 27B shapes,
  1/sqrt(head_dim) otherwise); a config whose ``query_pre_attn_scalar`` disagrees is refused rather than
  converted into a model that computes something else.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from ...errors import ForgeError
from ..checkpoint import to_float32
from . import Architecture, register


class _Gemma(Architecture):
    required_block_tensors = (
        "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "post_attention_norm.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
        "post_ffw_norm.weight",
    )
    #: layer count of the shape for which llama.cpp scales attention by 1/sqrt(hidden/heads)
    layers_27b: int = 0
    default_sliding_pattern: int = 2

    def __init__(self, config: dict):
        config = dict(config)
        config.setdefault("head_dim", 256)
        config.setdefault("tie_word_embeddings", True)
        super().__init__(config)
        act = config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu"):
            raise ForgeError(f"config.json: hidden_activation {act!r} is not what llama.cpp's Gemma computes")
        scalar = config.get("query_pre_attn_scalar")
        if scalar is not None:
            llama_cpp = self.n_embd / self.n_head if self.n_layer == self.layers_27b else self.head_dim
            if not math.isclose(float(scalar), float(llama_cpp)):
                raise ForgeError(
                    f"config.json: query_pre_attn_scalar={scalar} but llama.cpp will scale attention by "
                    f"1/sqrt({llama_cpp:g}) for this shape; the converted model would compute something else"
                )


    def rearranges(self, gguf_name: str) -> bool:
        return gguf_name.endswith("norm.weight")

    def transform(self, gguf_name: str, data: np.ndarray, dtype: str) -> np.ndarray:
        if gguf_name.endswith("norm.weight"):
            return to_float32(data, dtype) + np.float32(1.0)
        return data

    def sliding_layers(self) -> list[bool] | None:
        types = self.config.get("layer_types")
        if isinstance(types, list) and len(types) == self.n_layer:
            return [t == "sliding_attention" for t in types]
        return None

    def local_rope_theta(self) -> float | None:
        params = self.config.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
            return float(params["sliding_attention"].get("rope_theta") or 10000.0)
        if self.config.get("rope_local_base_freq") is not None:
            return float(self.config["rope_local_base_freq"])
        return None

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        self.add_common_hparams(w)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        if c.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        if c.get("sliding_window"):
            w.add_sliding_window(int(c["sliding_window"]))
            pattern = self.sliding_layers()
            if pattern is not None:
                w.add_sliding_window_pattern(pattern)
            local = self.local_rope_theta()
            if local is not None:
                w.add_rope_freq_base_swa(local)
        self.add_rope_scaling(w)


@register("Gemma2ForCausalLM")
class Gemma2(_Gemma):
    gguf_arch = gguf.MODEL_ARCH.GEMMA2
    layers_27b = 46

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if self.config.get("attn_logit_softcapping"):
            w.add_attn_logit_softcapping(float(self.config["attn_logit_softcapping"]))


@register("Gemma3ForCausalLM")
class Gemma3(_Gemma):
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    layers_27b = 62
    required_block_tensors = _Gemma.required_block_tensors + ("attn_q_norm.weight", "attn_k_norm.weight")

    def __init__(self, config: dict):
        super().__init__(config)
        if config.get("attn_logit_softcapping"):
            raise ForgeError("config.json: attn_logit_softcapping is set, which llama.cpp's gemma3 does not apply")
