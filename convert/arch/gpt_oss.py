"""gpt-oss (gpt-oss-20b / -120b) -> GGUF ``gpt-oss``.

- Attention with biases and learned per-head sinks (``self_attn.sinks`` -> ``attn_sinks.weight``), NEOX rope with
  yarn scaling, sliding-window attention on the layers ``layer_types`` marks (written as a per-layer pattern).
- A mixture of experts in every layer: router with bias -> ``ffn_gate_inp``; experts with biases, fused in the
  checkpoint as ``gate_up_proj`` ``[n_expert, n_embd, 2 x n_ff]`` (gate and up in alternate columns) and
  ``down_proj`` ``[n_expert, n_ff, n_embd]``; written as llama.cpp's 3-D ``ffn_{gate,up,down}_exps`` (transposed,
  one expert slab at a time, see :meth:`~gguf_forge.convert.arch.Architecture.expert_assemblies`). llama.cpp runs
  them with its built-in gpt-oss SwiGLU (alpha 1.702, clamp 7); a config asking for other constants is refused.
- MXFP4 experts (``*_blocks`` ``[n_expert, rows, cols / 32, 16]`` + ``*_scales`` ``[n_expert, rows, cols / 32]``
  bytes, as OpenAI released the weights) are read as such and, by default (``--outtype auto`` or ``q8_0``), written
  as GGML MXFP4, as llama.cpp's own converter does: the repacking only reorders 4-bit codes (GGML keeps elements j
  and j + 16 of a block in one byte, OpenAI elements 2j and 2j + 1) and copies the E8M0 scale, so the values are
  exactly the released ones at 4.25 bits per weight. An explicit float output type (``--outtype f32/f16/bf16``)
  dequantizes them instead (exactly: each value is a 4-bit code times a power of two): llama.cpp's CPU MXFP4
  kernels quantize the activations to 8 bits (Q8_0), which moves the logits visibly away from transformers' (max
  |diff| 6.7 on the tiny test model, against 2e-3 with the same weights as float), whereas float experts reproduce
  transformers' logits.
"""

from __future__ import annotations

from typing import Mapping

import gguf
import numpy as np

from ...errors import ForgeError
from ..checkpoint import TensorRef
from . import Architecture, Assembly, Piece, register

T = gguf.GGMLQuantizationType
_SWIGLU = {"swiglu_alpha": 1.702, "swiglu_limit": 7.0}  # what llama.cpp's LLM_FFN_SWIGLU_OAI_MOE computes


@register("GptOssForCausalLM")
class GptOss(Architecture):
    gguf_arch = gguf.MODEL_ARCH.GPT_OSS
    fused_experts = "in_out_interleaved"
    required_block_tensors = (
        "attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias", "attn_v.weight",
        "attn_v.bias", "attn_output.weight", "attn_output.bias", "attn_sinks.weight", "post_attention_norm.weight",
        "ffn_gate_inp.weight", "ffn_gate_inp.bias", "ffn_gate_exps.weight", "ffn_up_exps.weight",
        "ffn_down_exps.weight", "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias",
    )

    def __init__(self, config: dict):
        super().__init__(config)
        c = self.config
        n_expert = c.get("num_local_experts", c.get("num_experts"))
        used = c.get("num_experts_per_tok", c.get("experts_per_token"))
        for key, val in (("num_local_experts", n_expert), ("num_experts_per_tok", used)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ForgeError(f"config.json: {key} must be a positive integer for a gpt-oss model, got {val!r}")
        if used > n_expert:
            raise ForgeError(f"config.json: num_experts_per_tok {used} exceeds num_local_experts {n_expert}")
        self.n_expert, self.n_expert_used = n_expert, used
        for key, want in _SWIGLU.items():
            got = c.get(key, want)
            if not isinstance(got, (int, float)) or abs(float(got) - want) > 1e-6:
                raise ForgeError(f"config.json: {key} {got!r}, but llama.cpp's gpt-oss computes with {want}; the "
                                 "converted model would compute something else")
        window = c.get("sliding_window")
        if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
            raise ForgeError(f"config.json: sliding_window must be a positive integer for gpt-oss, got {window!r}")
        types = c.get("layer_types")
        if types is None:
            types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.n_layer)]
        if not isinstance(types, list) or len(types) != self.n_layer or \
                any(t not in ("sliding_attention", "full_attention") for t in types):
            raise ForgeError(f"config.json: layer_types must list sliding_attention or full_attention for each of "
                             f"the {self.n_layer} layers")
        self.sliding = [t == "sliding_attention" for t in types]
        #: notices for the user (ConvertResult.warnings)
        self.warnings: list[str] = []
        s = self.rope_scaling or {}
        if s.get("rope_type") == "yarn" and s.get("truncate") is False:
            self.warnings.append(
                "config.json: yarn rope with truncate false (as gpt-oss ships); llama.cpp always rounds yarn's "
                "correction range to whole dimensions, so its rope angles (and logits) differ slightly from "
                "transformers', as in every gpt-oss GGUF")

    def gguf_name(self, hf_name: str) -> str | None:
        if hf_name.endswith(".self_attn.sinks"):
            name = super().gguf_name(hf_name)
            return None if name is None else name + ".weight"
        return super().gguf_name(hf_name)

    def assemblies(self, tensors: Mapping[str, TensorRef]) -> list[Assembly]:
        out: list[Assembly] = []
        for b in range(self.n_layer):
            prefix = f"model.layers.{b}.mlp.experts"
            if f"{prefix}.gate_up_proj_blocks" in tensors or f"{prefix}.down_proj_blocks" in tensors:
                out += self._mxfp4_assemblies(tensors, b, prefix)
                out += self._expert_bias_assemblies(tensors, b, prefix, self.n_expert, self.n_ff, self.n_embd)
            else:
                out += self.expert_assemblies(tensors, b, prefix, self.n_expert, self.n_ff, bias=True)
        return out

    def _mxfp4_assemblies(self, tensors: Mapping[str, TensorRef], bid: int, prefix: str) -> list[Assembly]:
        e, f, h = self.n_expert, self.n_ff, self.n_embd
        want = {"gate_up_proj": (2 * f, h), "down_proj": (h, f)}
        for w, (rows, cols) in want.items():
            blocks, scales = f"{prefix}.{w}_blocks", f"{prefix}.{w}_scales"
            for name, shape in ((blocks, (e, rows, cols // 32, 16)), (scales, (e, rows, cols // 32))):
                if name not in tensors:
                    raise ForgeError(f"the checkpoint lacks tensor {name} that {self.arch_name} needs (MXFP4 "
                                     "experts come as _blocks and _scales); is the download complete?")
                ref = tensors[name]
                if ref.dtype != "U8" or tuple(ref.shape) != shape or cols % 32:
                    raise ForgeError(f"tensor {name}: {ref.dtype} {list(ref.shape)}, but MXFP4 experts of this "
                                     f"config.json are U8 {list(shape)}; the weights do not match the config")
        out = f"blk.{bid}.ffn_%s_exps.weight"
        gu_b, gu_s = f"{prefix}.gate_up_proj_blocks", f"{prefix}.gate_up_proj_scales"
        d_b, d_s = f"{prefix}.down_proj_blocks", f"{prefix}.down_proj_scales"
        def gate(b: np.ndarray, s: np.ndarray) -> np.ndarray:  # rows alternate gate, up
            return mxfp4_to_ggml(b[:, 0::2], s[:, 0::2])

        def up(b: np.ndarray, s: np.ndarray) -> np.ndarray:
            return mxfp4_to_ggml(b[:, 1::2], s[:, 1::2])

        return [Assembly(out % "gate", (e, f, h), (Piece(gu_b, gate, (gu_s,)),), T.MXFP4, mxfp4_values),
                Assembly(out % "up", (e, f, h), (Piece(gu_b, up, (gu_s,)),), T.MXFP4, mxfp4_values),
                Assembly(out % "down", (e, h, f), (Piece(d_b, mxfp4_to_ggml, (d_s,)),), T.MXFP4, mxfp4_values)]

    def expected_shape(self, gguf_name: str) -> tuple[tuple[int, ...], str] | None:
        e, f, h = self.n_expert, self.n_ff, self.n_embd
        short = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name
        table = {
            "attn_sinks.weight": ((self.n_head,), "num_attention_heads"),
            "attn_output.bias": ((h,), "hidden_size"),
            "ffn_gate_inp.weight": ((e, h), "num_local_experts, hidden_size"),
            "ffn_gate_inp.bias": ((e,), "num_local_experts"),
            "ffn_gate_exps.weight": ((e, f, h), "num_local_experts, intermediate_size, hidden_size"),
            "ffn_up_exps.weight": ((e, f, h), "num_local_experts, intermediate_size, hidden_size"),
            "ffn_down_exps.weight": ((e, h, f), "num_local_experts, hidden_size, intermediate_size"),
        }
        return table.get(short) or super().expected_shape(gguf_name)

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if self.head_dim == self.n_embd // self.n_head:  # else written by the base already
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        s = self.rope_scaling or {}
        if s.get("rope_type") == "yarn":
            if s.get("beta_fast") is not None:
                w.add_rope_scaling_yarn_beta_fast(float(s["beta_fast"]))
            if s.get("beta_slow") is not None:
                w.add_rope_scaling_yarn_beta_slow(float(s["beta_slow"]))
        w.add_sliding_window(int(self.config["sliding_window"]))
        w.add_sliding_window_pattern(self.sliding)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_feed_forward_length(self.n_ff)


def mxfp4_to_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OpenAI's MXFP4 (``blocks`` ``[..., n_block, 16]`` bytes holding elements 2j / 2j + 1 in the low / high
    nibble, ``scales`` ``[..., n_block]`` E8M0 bytes) -> GGML MXFP4 blocks ``[..., n_block * 17]`` (scale byte, then
    16 bytes holding elements j / j + 16 in the low / high nibble). Codes and scales are copied, not recomputed."""
    lo, hi = blocks & 0x0F, blocks >> 4
    vals = np.stack((lo, hi), axis=-1).reshape(*blocks.shape[:-1], 32)  # element order
    qs = (vals[..., :16] | (vals[..., 16:] << 4)).astype(np.uint8)
    out = np.concatenate((scales[..., None].astype(np.uint8), qs), axis=-1)
    return out.reshape(*out.shape[:-2], -1)


def mxfp4_values(ggml_rows: np.ndarray) -> np.ndarray:
    """GGML MXFP4 rows (bytes) -> their float32 values, exactly (small integers times powers of two)."""
    return gguf.quants.dequantize(ggml_rows, T.MXFP4).astype(np.float32, copy=False)
