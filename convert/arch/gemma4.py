"""Gemma 4, dense (``Gemma4ForCausalLM`` and the text model of ``Gemma4ForConditionalGeneration``) -> GGUF ``gemma4``.

Facts (llama.cpp's ``gemma4`` model and transformers' Gemma 4):
- RMS norms scale by ``weight`` (no ``1 +`` as in Gemma 2/3); norms after attention and after the MLP; Q/K norms per
  head; V is RMS-normalised without a weight by llama.cpp itself; attention scale 1 (fixed by llama.cpp).
- Sliding and global layers (``layer_types`` -> ``attention.sliding_window_pattern``) with their own head size
  (``head_dim`` / ``global_head_dim`` or ``per_layer_config``: ``attention.key_length[_swa]``), KV head count
  (array when they differ), rope base (``rope.freq_base[_swa]``) and rope width. Global layers use
  "proportional" rope: rotation over the full head with frequencies of ``partial_rotary_factor`` of it and the
  rest unrotated, which llama.cpp expresses as ``rope.dimension_count`` = head size plus a ``rope_freqs`` tensor
  of 1 (rotated) and 1e30 (unrotated) divisors.
- Per-layer embeddings (``hidden_size_per_layer_input``): the packed ``per_layer_token_embd`` table, its model
  projection and norm, and per layer an input gate, projection and post norm; ``layer_scalar`` ->
  ``layer_output_scale.weight``.
- The last ``num_kv_shared_layers`` layers reuse earlier layers' K/V (``attention.shared_kv_layers``; they store
  no K/V projections); ``attention_k_eq_v`` layers have no V projection (llama.cpp then uses K as V);
  ``use_double_wide_mlp`` doubles the shared layers' MLP width (``feed_forward_length`` per layer).
- Final logit soft-capping; embeddings scaled by sqrt(hidden) at run time by llama.cpp.
- MoE (``enable_moe_block``, 26B-A4B): every layer adds to its dense MLP a routed expert block; the router
  (``ffn_gate_inp`` + its input ``scale``), the per-expert output scale (``ffn_down_exps.scale``) and the fused 3-D
  experts, which transformers stores in llama.cpp's layout already (``ffn_gate_up_exps``, gate rows first;
  ``ffn_down_exps``), streamed one slab of experts at a time; ``expert_count``/``expert_used_count``/
  ``expert_feed_forward_length``. llama.cpp normalises the top-k weights, as transformers does.
"""

from __future__ import annotations

import re

import gguf
import numpy as np

from ...errors import ForgeError
from . import Architecture, register
from .multimodal import TextPart


def _int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ForgeError(f"config.json: {what} must be a non-negative integer, got {value!r}")
    return value


@register("Gemma4ForCausalLM", "Gemma4ForConditionalGeneration")
class Gemma4(TextPart, Architecture):
    gguf_arch = gguf.MODEL_ARCH.GEMMA4

    def __init__(self, config: dict):
        super().__init__(config)
        c = self.config
        self.moe = bool(c.get("enable_moe_block"))
        if self.moe:
            self.n_expert = _int(c.get("num_experts") or 0, "num_experts")
            self.n_expert_used = _int(c.get("top_k_experts") or 0, "top_k_experts")
            self.n_ff_exp = _int(c.get("moe_intermediate_size") or 0, "moe_intermediate_size")
            if not 0 < self.n_expert_used <= self.n_expert or not self.n_ff_exp:
                raise ForgeError(f"config.json: Gemma 4 MoE needs num_experts, top_k_experts (1..num_experts) and "
                                 f"moe_intermediate_size; got {self.n_expert}, {self.n_expert_used}, {self.n_ff_exp}")
        act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu"):
            raise ForgeError(f"config.json: hidden_activation {act!r} is not what llama.cpp's gemma4 computes")
        if c.get("use_bidirectional_attention") == "all":
            raise ForgeError("config.json: use_bidirectional_attention 'all' (an encoder); llama.cpp's gemma4 is "
                             "causal")
        if c.get("attention_bias"):
            raise ForgeError("config.json: attention_bias is set, which llama.cpp's gemma4 does not load")
        types = c.get("layer_types")
        if not isinstance(types, list) or len(types) != self.n_layer or \
                any(t not in ("sliding_attention", "full_attention") for t in types):
            raise ForgeError(f"config.json: layer_types must name sliding_attention or full_attention for each of the "
                             f"{self.n_layer} layers")
        self.swa = [t == "sliding_attention" for t in types]
        per = c.get("per_layer_config") or {}
        full_cfg: dict = {}
        for idx, lc in per.items():
            if isinstance(lc, dict) and str(idx).isdigit() and int(idx) < self.n_layer and not self.swa[int(idx)]:
                full_cfg = lc
                break
        self.head_dim_full = _int(c.get("global_head_dim") or full_cfg.get("head_dim") or self.head_dim,
                                  "global_head_dim")
        self.kv_full = _int(full_cfg.get("num_key_value_heads") or c.get("num_global_key_value_heads")
                            or self.n_head_kv, "num_global_key_value_heads")
        if self.head_dim_full % 2 or not self.head_dim_full:
            raise ForgeError(f"config.json: global head size {self.head_dim_full} must be even")
        self.head_dims = [self.head_dim if s else self.head_dim_full for s in self.swa]
        self.kv_heads = [self.n_head_kv if s else self.kv_full for s in self.swa]
        self.n_shared = _int(c.get("num_kv_shared_layers") or 0, "num_kv_shared_layers")
        if self.n_shared >= self.n_layer:
            raise ForgeError(f"config.json: num_kv_shared_layers {self.n_shared} leaves no layer with its own K/V")
        self.first_shared = self.n_layer - self.n_shared
        self.k_eq_v = bool(c.get("attention_k_eq_v"))
        self.n_ple = _int(c.get("hidden_size_per_layer_input") or 0, "hidden_size_per_layer_input")
        if self.n_ple and (c.get("vocab_size_per_layer_input") or self.n_vocab) != self.n_vocab:
            raise ForgeError("config.json: vocab_size_per_layer_input differs from vocab_size; llama.cpp's gemma4 "
                             "indexes both tables with the same token ids")
        self.double_wide = bool(c.get("use_double_wide_mlp"))
        self._rope_settings()

    def _rope_settings(self) -> None:
        params = self.config.get("rope_parameters") or {}
        full = params.get("full_attention") or {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                                  "rope_theta": 1_000_000.0}
        swa = params.get("sliding_attention") or {"rope_type": "default", "rope_theta": 10_000.0}
        kind_full = full.get("rope_type", full.get("type", "default"))
        kind_swa = swa.get("rope_type", swa.get("type", "default"))
        if kind_full not in ("proportional", "default") or kind_swa != "default" or \
                float(full.get("factor", 1.0)) != 1.0:
            raise ForgeError(f"config.json: Gemma 4 rope {kind_full!r} (global) / {kind_swa!r} (sliding) with factor "
                             f"{full.get('factor', 1.0)}; llama.cpp's gemma4 implements proportional/default rope only")
        self.theta_full = float(full.get("rope_theta") or 1_000_000.0)
        self.theta_swa = float(swa.get("rope_theta") or 10_000.0)
        prf_full = float(full.get("partial_rotary_factor", 1.0))
        prf_swa = float(swa.get("partial_rotary_factor", 1.0))
        if kind_full == "proportional":
            self.n_rot_full = self.head_dim_full
            angles = int(prf_full * self.head_dim_full // 2)
        else:
            self.n_rot_full = int(self.head_dim_full * prf_full)
            angles = self.n_rot_full // 2
        self.rope_freqs = np.asarray([1.0] * angles + [1e30] * (self.head_dim_full // 2 - angles), dtype=np.float32)
        self.n_rot_swa = int(self.head_dim * prf_swa)
        if self.n_rot_swa % 2 or self.n_rot_full % 2:
            raise ForgeError("config.json: Gemma 4 partial_rotary_factor gives an odd rotary width")
        self.rope_theta = self.theta_full

    def _check_rope_type(self) -> None:
        pass  # see _rope_settings (per layer type)

    def _check_heads(self) -> None:
        if self.n_head % self.n_head_kv:
            raise ForgeError(f"config.json: num_attention_heads {self.n_head} is not a multiple of "
                             f"num_key_value_heads {self.n_head_kv}")

    def gguf_name(self, hf_name: str) -> str | None:
        m = re.match(r"^(?:model\.language_model\.|language_model\.model\.|model\.)layers\.(\d+)\.(router\.scale|"
                     r"router\.per_expert_scale|experts\.gate_up_proj|experts\.down_proj)$", hf_name)
        if m is not None and self.moe:
            # the MoE router's input scale, the per-expert output scale and the fused 3-D experts (written as
            # stored: [n_expert, 2 x n_ff_exp (gate rows, then up), n_embd] and [n_expert, n_embd, n_ff_exp])
            return f"blk.{m.group(1)}." + {"router.scale": "ffn_gate_inp.scale",
                                           "router.per_expert_scale": "ffn_down_exps.scale",
                                           "experts.gate_up_proj": "ffn_gate_up_exps.weight",
                                           "experts.down_proj": "ffn_down_exps.weight"}[m.group(2)]
        name = super().gguf_name(hf_name)
        if name is not None and name.endswith("layer_output_scale"):
            return name + ".weight"
        return name

    def has_kv(self, layer: int) -> bool:
        return layer < self.first_shared

    def n_ff_of(self, layer: int) -> int:
        return self.n_ff * 2 if self.double_wide and layer >= self.first_shared else self.n_ff

    def expected_shape(self, gguf_name: str) -> tuple[tuple[int, ...], str] | None:
        m = re.match(r"^blk\.(\d+)\.(.*)$", gguf_name)
        e = self.n_embd
        if m is None:
            if gguf_name == "per_layer_token_embd.weight":
                return (self.n_vocab, self.n_layer * self.n_ple), "vocab_size, layers x hidden_size_per_layer_input"
            if gguf_name == "per_layer_model_proj.weight":
                return (self.n_layer * self.n_ple, e), "layers x hidden_size_per_layer_input, hidden_size"
            if gguf_name == "per_layer_proj_norm.weight":
                return (self.n_ple,), "hidden_size_per_layer_input"
            return super().expected_shape(gguf_name)
        b, t = int(m.group(1)), m.group(2)
        hd, kv, f = self.head_dims[b], self.kv_heads[b], self.n_ff_of(b)
        what = "global" if not self.swa[b] else "sliding"
        table = {
            "attn_q.weight": ((self.n_head * hd, e), f"num_attention_heads x {what} head_dim, hidden_size"),
            "attn_k.weight": ((kv * hd, e), f"{what} key_value heads x head_dim, hidden_size"),
            "attn_v.weight": ((kv * hd, e), f"{what} key_value heads x head_dim, hidden_size"),
            "attn_output.weight": ((e, self.n_head * hd), f"hidden_size, num_attention_heads x {what} head_dim"),
            "attn_q_norm.weight": ((hd,), f"{what} head_dim"), "attn_k_norm.weight": ((hd,), f"{what} head_dim"),
            "ffn_gate.weight": ((f, e), "intermediate_size (of this layer), hidden_size"),
            "ffn_up.weight": ((f, e), "intermediate_size (of this layer), hidden_size"),
            "ffn_down.weight": ((e, f), "hidden_size, intermediate_size (of this layer)"),
            "inp_gate.weight": ((self.n_ple, e), "hidden_size_per_layer_input, hidden_size"),
            "proj.weight": ((e, self.n_ple), "hidden_size, hidden_size_per_layer_input"),
            "layer_output_scale.weight": ((1,), "one value"),
        }
        if self.moe:
            x, fx = self.n_expert, self.n_ff_exp
            table.update({
                "ffn_gate_inp.weight": ((x, e), "num_experts, hidden_size"),
                "ffn_gate_inp.scale": ((e,), "hidden_size"), "ffn_down_exps.scale": ((x,), "num_experts"),
                "ffn_gate_up_exps.weight": ((x, 2 * fx, e), "num_experts, 2 x moe_intermediate_size, hidden_size"),
                "ffn_down_exps.weight": ((x, e, fx), "num_experts, hidden_size, moe_intermediate_size"),
            })
        if t in table:
            return table[t]
        return super().expected_shape(f"blk.{b}.{t}")

    def check_complete(self, names: set[str]) -> None:
        need = ["token_embd.weight", "output_norm.weight"]
        if not self.tied:
            need.append("output.weight")
        if self.n_ple:
            need += ["per_layer_token_embd.weight", "per_layer_model_proj.weight", "per_layer_proj_norm.weight"]
        for b in range(self.n_layer):
            block = ["attn_norm", "attn_q", "attn_q_norm", "attn_output", "post_attention_norm", "ffn_norm",
                     "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"]
            if self.has_kv(b):
                block += ["attn_k", "attn_k_norm"]
            if self.n_ple:
                block += ["inp_gate", "proj", "post_norm"]
            if self.moe:
                block += ["ffn_gate_inp", "ffn_gate_up_exps", "ffn_down_exps", "pre_ffw_norm_2", "post_ffw_norm_1",
                          "post_ffw_norm_2"]
                need += [f"blk.{b}.ffn_gate_inp.scale", f"blk.{b}.ffn_down_exps.scale"]
            need += [f"blk.{b}.{t}.weight" for t in block]
        missing = [n for n in need if n not in names]
        if missing:
            raise ForgeError(f"the checkpoint lacks tensor {missing[0]} (GGUF name) and {len(missing) - 1} more that "
                             f"{self.arch_name} needs; is the download complete?")

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        ffs = [self.n_ff_of(b) for b in range(self.n_layer)]
        w.add_feed_forward_length(ffs if len(set(ffs)) > 1 else self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.kv_heads if len(set(self.kv_heads)) > 1 else self.n_head_kv)
        w.add_rope_freq_base(self.theta_full)
        eps = c.get("rms_norm_eps")
        w.add_layer_norm_rms_eps(float(1e-6 if eps is None else eps))
        w.add_vocab_size(self.n_vocab)
        w.add_key_length(self.head_dim_full)
        w.add_value_length(self.head_dim_full)
        w.add_key_length_swa(self.head_dim)
        w.add_value_length_swa(self.head_dim)
        w.add_rope_dimension_count(self.n_rot_full)
        w.add_rope_dimension_count_swa(self.n_rot_swa)
        w.add_rope_freq_base_swa(self.theta_swa)
        w.add_sliding_window(int(c.get("sliding_window") or 512))
        w.add_sliding_window_pattern(self.swa)
        w.add_shared_kv_layers(self.n_shared)
        w.add_embedding_length_per_layer_input(self.n_ple)
        if c.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        if self.moe:
            w.add_expert_count(self.n_expert)
            w.add_expert_used_count(self.n_expert_used)
            w.add_expert_feed_forward_length(self.n_ff_exp)

    def extra_tensors(self) -> dict[str, np.ndarray]:
        return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": self.rope_freqs}
