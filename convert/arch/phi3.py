"""Phi-3, Phi-3.5, Phi-4 and Phi-4-mini (``Phi3ForCausalLM``) -> GGUF ``phi3``.

Facts (llama.cpp's ``phi3`` model and graph):
- Q, K and V are one fused ``qkv_proj`` (``attn_qkv``) and gate/up one fused ``gate_up_proj`` (``ffn_up``, gate
  half first, as llama.cpp's SWIGLU splits it); both are written as stored. NEOX rope: Q/K rows stay as stored.
- Partial rotary (Phi-4-mini's ``partial_rotary_factor``): ``rope.dimension_count`` is that share of head_dim.
- LongRoPE (``rope_type`` ``longrope``/``su``): per-dimension ``rope_factors_long``/``rope_factors_short`` tensors,
  ``rope.scaling.original_context_length`` and ``rope.scaling.attn_factor`` (the cos/sin magnitude
  transformers applies). llama.cpp picks the short factors while the context is at most the original length and
  the long ones beyond (transformers decides per sequence length instead).
- ``sliding_window`` is written (0 when absent) although llama.cpp's phi3 currently ignores it (its graph is
  full attention); within the window both compute the same.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from ...errors import ForgeError
from . import Architecture, register


def rope_params(config: dict) -> dict:
    """The rope setting as one dict, from ``rope_parameters`` (transformers 5) or ``rope_scaling`` + top-level keys."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    out = dict(config.get("rope_scaling") or {}) if not isinstance(params, dict) else dict(params)
    out.setdefault("rope_type", out.get("type") or "default")
    for key in ("partial_rotary_factor", "original_max_position_embeddings"):
        if out.get(key) is None and config.get(key) is not None:
            out[key] = config[key]
    return out


def rotary_dims(arch: Architecture, params: dict) -> int:
    """``int(head_dim * partial_rotary_factor)``, as transformers computes it; refused unless even and positive."""
    factor = params.get("partial_rotary_factor")
    factor = 1.0 if factor is None else factor
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 0 < factor <= 1:
        raise ForgeError(f"config.json: partial_rotary_factor must be a number in (0, 1], got {factor!r}")
    n_rot = int(arch.head_dim * factor)
    if n_rot <= 0 or n_rot % 2:
        raise ForgeError(f"config.json: partial_rotary_factor {factor} gives {n_rot} rotary dimensions of head_dim "
                         f"{arch.head_dim}; rope needs a positive even count")
    return n_rot


@register("Phi3ForCausalLM")
class Phi3(Architecture):
    gguf_arch = gguf.MODEL_ARCH.PHI3
    required_block_tensors = (
        "attn_norm.weight", "attn_qkv.weight", "attn_output.weight",
        "ffn_norm.weight", "ffn_up.weight", "ffn_down.weight",
    )

    def __init__(self, config: dict):
        super().__init__(config)
        self.rope = rope_params(config)
        self.n_rot = rotary_dims(self, self.rope)
        self.orig_ctx = self.rope.get("original_max_position_embeddings")
        self.long_factors: np.ndarray | None = None
        self.short_factors: np.ndarray | None = None
        self.attn_factor = 1.0
        if self.rope["rope_type"] in ("longrope", "su"):
            self._longrope()

    def _check_rope_type(self) -> None:
        kind = (self.rope_scaling or {}).get("rope_type")
        if kind not in (None, "longrope", "su"):
            raise ForgeError(f"config.json: rope scaling type {kind!r} is not supported for {self.arch_name} "
                             "(llama.cpp's phi3 implements LongRoPE only)")

    def _longrope(self) -> None:
        r = self.rope
        if not self.orig_ctx:
            raise ForgeError("config.json: LongRoPE needs original_max_position_embeddings")
        for key in ("long_factor", "short_factor"):
            values = r.get(key)
            ok = isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  and math.isfinite(v) and v > 0 for v in values)
            if not ok or len(values) != self.n_rot // 2:
                raise ForgeError(f"config.json: rope {key} must be {self.n_rot // 2} positive numbers (half the "
                                 f"{self.n_rot} rotary dimensions), got {str(values)[:60]}")
        self.long_factors = np.asarray(r["long_factor"], dtype=np.float32)
        self.short_factors = np.asarray(r["short_factor"], dtype=np.float32)
        if r.get("attention_factor") is not None:
            self.attn_factor = float(r["attention_factor"])
        else:
            factor = float(r.get("factor") or self.n_ctx / self.orig_ctx)
            self.attn_factor = math.sqrt(1 + math.log(factor) / math.log(self.orig_ctx)) if factor > 1 else 1.0

    def expected_shape(self, gguf_name: str) -> tuple[tuple[int, ...], str] | None:
        q, kv, e, f = self.n_head * self.head_dim, self.n_head_kv * self.head_dim, self.n_embd, self.n_ff
        if gguf_name.endswith("attn_qkv.weight"):
            return (q + 2 * kv, e), "(num_attention_heads + 2 x num_key_value_heads) x head_dim, hidden_size"
        if gguf_name.endswith("ffn_up.weight"):
            return (2 * f, e), "2 x intermediate_size, hidden_size"
        return super().expected_shape(gguf_name)

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        self.add_common_hparams(w)
        w.add_rope_dimension_count(self.n_rot)
        if self.head_dim != self.n_embd // self.n_head:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        if self.orig_ctx:
            w.add_rope_scaling_orig_ctx_len(int(self.orig_ctx))
        if self.long_factors is not None:
            w.add_rope_scaling_attn_factors(self.attn_factor)
        w.add_sliding_window(int(self.config.get("sliding_window") or 0))

    def extra_tensors(self) -> dict[str, np.ndarray]:
        if self.long_factors is None or self.short_factors is None:
            return {}
        return {
            gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight": self.long_factors,
            gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight": self.short_factors,
        }
