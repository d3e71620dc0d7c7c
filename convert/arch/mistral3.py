"""Ministral 3 (``Ministral3ForCausalLM``) and the text model of ``Mistral3ForConditionalGeneration`` (Ministral 3,
Mistral Small 3.1/3.2) -> GGUF ``mistral3``.

The llama layout (interleaved rope: Q/K rows permuted as for ``llama``) plus what Ministral 3 adds:
- YaRN rope: type, factor, original context, ``beta_fast``/``beta_slow``, and the cos/sin magnitude transformers
  applies (``attention_factor``, or ``mscale``/``mscale_all_dim``): written as ``rope.scaling.yarn_log_mul``
  (``mscale_all_dim``) the way llama.cpp reads it, plus ``rope.scaling.attn_factor`` for whatever that leaves
  unexplained. llama.cpp always truncates the YaRN correction range; ``truncate: false`` is refused.
- Llama-4 style attention temperature: queries scaled by ``1 + beta * log(1 + floor(pos / original_ctx))``
  (``llama_4_scaling_beta`` -> ``attention.temperature_scale``; llama.cpp divides positions by
  ``rope.scaling.original_context_length``).
The vision tower and projector of a multimodal checkpoint are left out with a warning (see :mod:`.multimodal`).
"""

from __future__ import annotations

import math

import gguf

from ...errors import ForgeError
from . import register
from .llama import Llama
from .multimodal import TextPart


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@register("Ministral3ForCausalLM", "Mistral3ForConditionalGeneration")
class Mistral3(TextPart, Llama):
    gguf_arch = gguf.MODEL_ARCH.MISTRAL3

    def __init__(self, config: dict):
        super().__init__(config)
        s = self.rope_scaling or {}
        if s.get("rope_type") == "yarn" and s.get("truncate") is False:
            raise ForgeError("config.json: YaRN with truncate=false; llama.cpp always truncates the correction range")
        self.temperature_beta = s.get("llama_4_scaling_beta")
        if self.temperature_beta is not None:
            if not isinstance(self.temperature_beta, (int, float)) or not math.isfinite(self.temperature_beta):
                raise ForgeError(f"config.json: llama_4_scaling_beta must be a number, got {self.temperature_beta!r}")
            if not s.get("original_max_position_embeddings"):
                raise ForgeError("config.json: llama_4_scaling_beta needs rope original_max_position_embeddings")
        if self.config.get("sliding_window") and self.config.get("use_sliding_window", True):
            if int(self.config["sliding_window"]) < self.n_ctx:
                raise ForgeError(f"config.json: sliding_window {self.config['sliding_window']} is set, which "
                                 "llama.cpp's mistral3 does not apply")

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        s = self.rope_scaling or {}
        if s.get("rope_type") == "yarn":
            factor = float(s["factor"])
            for key, add in (("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                             ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
                if s.get(key) is not None:
                    add(float(s[key]))
            # the cos/sin magnitude transformers applies ...
            mscale, all_dims = s.get("mscale"), s.get("mscale_all_dim")
            if s.get("attention_factor") is not None:
                want = float(s["attention_factor"])
            elif mscale and all_dims:
                want = _mscale(factor, float(mscale)) / _mscale(factor, float(all_dims))
            else:
                want = _mscale(factor)
            # ... and what llama.cpp computes from yarn_log_mul (it assumes mscale == 1)
            if all_dims:
                w.add_rope_scaling_yarn_log_mul(float(all_dims))
                have = _mscale(factor) / _mscale(factor, float(all_dims))
            else:
                have = _mscale(factor)
            if not math.isclose(want, have, rel_tol=1e-7):
                w.add_rope_scaling_attn_factors(want / have)
        if self.temperature_beta is not None:
            w.add_attn_temperature_scale(float(self.temperature_beta))
            if s.get("rope_type") != "yarn":  # llama.cpp divides positions by the original context length
                w.add_rope_scaling_orig_ctx_len(int(s["original_max_position_embeddings"]))
