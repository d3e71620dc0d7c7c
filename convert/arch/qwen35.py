"""Qwen3.5 / Qwen3.6 (dense and MoE) -> GGUF ``qwen35`` / ``qwen35moe``.

Hybrid layers (``layer_types``; by default every ``full_attention_interval``-th layer, 4 in every release, is full
attention and the rest Gated DeltaNet linear attention). What llama.cpp expects, as its own converter writes it:

- Linear-attention layers (``linear_attn.*``): ``in_proj_qkv`` -> ``attn_qkv`` (Q, K, V rows, the causal conv's input
  channels), ``in_proj_z`` -> ``attn_gate``, ``in_proj_b`` -> ``ssm_beta``, ``in_proj_a`` -> ``ssm_alpha``,
  ``out_proj`` -> ``ssm_out``, ``norm`` (the gated RMSNorm, plain weight) -> ``ssm_norm``; ``A_log`` is stored as
  ``ssm_a = -exp(A_log)``, ``dt_bias`` as ``ssm_dt.bias``, and the depthwise ``conv1d.weight`` ``[channels, 1,
  kernel]`` as the 2-D ``ssm_conv1d`` ``[channels, kernel]`` (kept float32, as ggml's ssm_conv needs).
  With more value heads than key heads (every release: 32 vs 16), Hugging Face groups the value heads by key head
  while llama.cpp broadcasts key heads tiled, so every value-head axis (V rows of ``attn_qkv`` and of the conv,
  ``attn_gate`` rows, ``ssm_beta``/``ssm_alpha`` rows, ``ssm_a``, ``ssm_dt``, ``ssm_out`` columns) is reordered
  grouped -> tiled.
- Full-attention layers: ``q_proj`` yields query and output gate interleaved per head (``[q_h, gate_h]``), which
  llama.cpp reads as they are; per-head Q/K RMS norms; NEOX-style rope on the first ``partial_rotary_factor`` of each
  head (``rope.dimension_count``) with the interleaved MRoPE ``mrope_section`` (``rope.dimension_sections``).
- Every RMSNorm except the gated one scales by ``1 + weight``; llama.cpp expects the ``1 +`` applied.
- MoE: router ``mlp.gate`` -> ``ffn_gate_inp``, experts -> 3-D ``ffn_{gate,up,down}_exps`` (stacked while streaming,
  see :meth:`~gguf_forge.convert.arch.Architecture.expert_assemblies`), ``shared_expert.*`` -> ``ffn_*_shexp`` and
  its sigmoid gate ``shared_expert_gate`` ``[1, hidden]`` -> ``ffn_gate_inp_shexp`` ``[hidden]``. The routing
  (softmax, top-k renormalised) is what llama.cpp's graph hard-codes and what every Qwen3.5-MoE computes.

``Qwen3_5ForConditionalGeneration`` / ``Qwen3_5MoeForConditionalGeneration`` checkpoints (every Qwen3.5 release):
the text model's settings are read from ``text_config`` and its tensors from ``model.language_model.*``; the vision
tower (``model.visual.*``) is left out with one warning, as is a multi-token-prediction head (``mtp.*``), which
llama.cpp does not need to generate.
"""

from __future__ import annotations

from typing import Mapping

import gguf
import numpy as np

from ...errors import ForgeError
from ..checkpoint import TensorRef, to_float32
from . import Architecture, Assembly, register
from .multimodal import text_config

#: where the text model's tensors live -> their plain causal-LM names
_TEXT_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                  ("language_model.lm_head.", "lm_head."))
_LINEAR = ("attn_norm.weight", "post_attention_norm.weight", "attn_qkv.weight", "attn_gate.weight",
           "ssm_conv1d.weight", "ssm_dt.bias", "ssm_a", "ssm_beta.weight", "ssm_alpha.weight", "ssm_norm.weight",
           "ssm_out.weight")
_FULL = ("attn_norm.weight", "post_attention_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
         "attn_output.weight", "attn_q_norm.weight", "attn_k_norm.weight")
_DENSE_FFN = ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
_MOE_FFN = ("ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
            "ffn_gate_inp_shexp.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight")
#: Qwen3.5's default MRoPE sections (transformers' Qwen3_5TextRotaryEmbedding), written when a config omits them
_DEFAULT_MROPE = [11, 11, 10]


def reorder_v_heads(data: np.ndarray, axis: int, n_k: int, per_k: int, head_dim: int) -> np.ndarray:
    """Value heads along ``axis`` from Hugging Face's grouped order (``[k0: v0..v{r-1}, k1: ...]``) to llama.cpp's
    tiled order (``[v0 of k0, v0 of k1, ..., v1 of k0, ...]``); a pure permutation (raw dtypes pass through)."""
    shape = data.shape
    axis %= data.ndim
    split = shape[:axis] + (n_k, per_k, head_dim) + shape[axis + 1:]
    return np.ascontiguousarray(data.reshape(split).swapaxes(axis, axis + 1)).reshape(shape)


class _Qwen35(Architecture):
    gguf_arch = gguf.MODEL_ARCH.QWEN35
    moe = False
    #: ggml's ssm_conv reads a float32 kernel (routers stay float32 through the converter's own rule)
    f32_tensors = ("ssm_conv1d.weight",)

    def __init__(self, config: dict):
        config = dict(text_config(config))
        if self.moe:
            for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
                        "shared_expert_intermediate_size"):
                val = config.get(key)
                if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                    raise ForgeError(f"config.json: {key} must be a positive integer for a Qwen3.5-MoE model, "
                                     f"got {val!r}")
            if config["num_experts_per_tok"] > config["num_experts"]:
                raise ForgeError(f"config.json: num_experts_per_tok {config['num_experts_per_tok']} exceeds "
                                 f"num_experts {config['num_experts']}")
            config.setdefault("intermediate_size", config["moe_intermediate_size"])  # no dense MLP in any layer
        super().__init__(config)
        c = self.config
        self.warnings: list[str] = []
        self._left_out: dict[str, set[str]] = {}
        self.layer_types = self._layer_types()
        self.recurrent = [t == "linear_attention" for t in self.layer_types]
        lin = {}
        for key, default in (("linear_conv_kernel_dim", 4), ("linear_key_head_dim", 128),
                             ("linear_value_head_dim", 128), ("linear_num_key_heads", 16),
                             ("linear_num_value_heads", 32)):
            val = c.get(key, default)
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ForgeError(f"config.json: {key} must be a positive integer, got {val!r}")
            lin[key] = val
        self.d_conv = lin["linear_conv_kernel_dim"]
        self.k_dim, self.v_dim = lin["linear_key_head_dim"], lin["linear_value_head_dim"]
        self.n_k, self.n_v = lin["linear_num_key_heads"], lin["linear_num_value_heads"]
        if self.k_dim != self.v_dim:
            raise ForgeError(f"config.json: linear_key_head_dim {self.k_dim} != linear_value_head_dim {self.v_dim}; "
                             f"llama.cpp's {self.arch_name} assumes equal key and value head sizes")
        if self.n_v % self.n_k:
            raise ForgeError(f"config.json: linear_num_value_heads {self.n_v} is not a multiple of "
                             f"linear_num_key_heads {self.n_k}")
        params = c.get("rope_parameters") if isinstance(c.get("rope_parameters"), dict) else {}
        factor = params.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.25))
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 0 < factor <= 1:
            raise ForgeError(f"config.json: partial_rotary_factor must be in (0, 1], got {factor!r}")
        self.n_rot = int(self.head_dim * factor)
        if self.n_rot < 2 or self.n_rot % 2:
            raise ForgeError(f"config.json: head_dim {self.head_dim} x partial_rotary_factor {factor} = {self.n_rot} "
                             "rotary dimensions; rope needs an even number")
        sections = params.get("mrope_section", c.get("mrope_section", _DEFAULT_MROPE))
        if not (isinstance(sections, list) and 1 <= len(sections) <= 4
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sections)):
            raise ForgeError(f"config.json: mrope_section must be a list of up to 4 non-negative integers, "
                             f"got {sections!r}")
        self.sections = list(sections) + [0] * (4 - len(sections))

    def _layer_types(self) -> list[str]:
        c = self.config
        types = c.get("layer_types")
        if types is None:
            k = c.get("full_attention_interval", 4)
            if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
                raise ForgeError(f"config.json: full_attention_interval must be a positive integer, got {k!r}")
            return ["linear_attention" if (i + 1) % k else "full_attention" for i in range(self.n_layer)]
        if not isinstance(types, list) or len(types) != self.n_layer:
            raise ForgeError(f"config.json: layer_types must list one entry per layer ({self.n_layer})")
        bad = [t for t in types if t not in ("linear_attention", "full_attention")]
        if bad:
            raise ForgeError(f"config.json: layer_types entry {bad[0]!r} is not linear_attention or full_attention")
        return list(types)

    # -- tensors -------------------------------------------------------------------------
    def _plain(self, hf_name: str) -> str | None:
        """The causal-LM name of a text tensor; None (counted) for the vision tower, MTP head and the like."""
        for prefix, plain in _TEXT_PREFIXES:
            if hf_name.startswith(prefix):
                return plain + hf_name[len(prefix):]
        if hf_name.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")):
            return hf_name
        parts = hf_name.split(".")
        part = ".".join(parts[:2]) if parts[0] in ("model", "mtp") and len(parts) > 2 else parts[0]
        if part.startswith("mtp"):
            part = "mtp"
        self._left_out.setdefault(part, set()).add(hf_name)
        return None

    def _text_prefix(self, tensors: Mapping[str, TensorRef]) -> str:
        for prefix, plain in _TEXT_PREFIXES:
            if plain == "model." and any(n.startswith(prefix) for n in tensors):
                return prefix
        return "model."

    def gguf_name(self, hf_name: str) -> str | None:
        plain = self._plain(hf_name)
        if plain is None:
            self._note_left_out()
            return None
        if plain.endswith(".linear_attn.dt_bias"):
            base = super().gguf_name(plain[: -len(".dt_bias")] + ".dt_proj.weight")
            return None if base is None else base[: -len(".weight")] + ".bias"
        return super().gguf_name(plain)

    def _note_left_out(self) -> None:
        parts = ", ".join(f"{p} ({len(n)} tensors)" for p, n in self._left_out.items())
        arch = (self.config.get("architectures") or ["the model"])[0]
        why = []
        if any(p != "mtp" for p in self._left_out):
            why.append("llama.cpp runs a vision tower from a separate mmproj file, which this tool does not write")
        if "mtp" in self._left_out:
            why.append("the multi-token-prediction head only serves speculative decoding")
        self.warnings[:] = [f"{arch}: only the text model is converted; left out: {parts} ({'; '.join(why)})"]

    @property
    def _reorders(self) -> bool:
        return self.n_v != self.n_k

    def rearranges(self, gguf_name: str) -> bool:
        short = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name
        if short.endswith("norm.weight") or short in ("ssm_a", "ssm_conv1d.weight", "ffn_gate_inp_shexp.weight"):
            return True
        return self._reorders and short in ("attn_qkv.weight", "attn_gate.weight", "ssm_beta.weight",
                                            "ssm_alpha.weight", "ssm_dt.bias", "ssm_out.weight")

    def gguf_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if gguf_name.endswith("ssm_conv1d.weight") and len(shape) == 3 and shape[1] == 1:
            return (shape[0], shape[2])
        if gguf_name.endswith("ffn_gate_inp_shexp.weight") and len(shape) == 2 and shape[0] == 1:
            return (shape[1],)
        return tuple(shape)

    def transform(self, gguf_name: str, data: np.ndarray, dtype: str) -> np.ndarray:
        short = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name
        r = self.n_v // self.n_k
        if short == "ssm_conv1d.weight":
            data = data.reshape(data.shape[0], data.shape[-1])
            if self._reorders:
                qk = 2 * self.n_k * self.k_dim
                data = np.concatenate([data[:qk], reorder_v_heads(data[qk:], 0, self.n_k, r, self.v_dim)])
            return data
        if short == "ffn_gate_inp_shexp.weight":
            return data.reshape(-1)
        if short.endswith("norm.weight"):
            return data if short == "ssm_norm.weight" else to_float32(data, dtype) + np.float32(1.0)
        if short == "ssm_a":
            data = -np.exp(to_float32(data, dtype))
        if not self._reorders:
            return data
        if short == "attn_qkv.weight":
            qk = 2 * self.n_k * self.k_dim
            return np.concatenate([data[:qk], reorder_v_heads(data[qk:], 0, self.n_k, r, self.v_dim)])
        if short == "attn_gate.weight":
            return reorder_v_heads(data, 0, self.n_k, r, self.v_dim)
        if short in ("ssm_beta.weight", "ssm_alpha.weight", "ssm_dt.bias", "ssm_a"):
            return reorder_v_heads(data, 0, self.n_k, r, 1)
        if short == "ssm_out.weight":
            return reorder_v_heads(data, 1, self.n_k, r, self.v_dim)
        return data

    def imatrix_columns(self, gguf_name: str, values: np.ndarray) -> np.ndarray:
        """``ssm_out``'s input columns are value heads, reordered grouped -> tiled like the weight."""
        if self._reorders and gguf_name.endswith("ssm_out.weight"):
            return reorder_v_heads(values, -1, self.n_k, self.n_v // self.n_k, self.v_dim)
        return values

    def expected_shape(self, gguf_name: str) -> tuple[tuple[int, ...], str] | None:
        e, q = self.n_embd, self.n_head * self.head_dim
        key_dim, value_dim = self.n_k * self.k_dim, self.n_v * self.v_dim
        lin = "linear_num_key_heads x linear_key_head_dim"
        vals = "linear_num_value_heads x linear_value_head_dim"
        table: dict[str, tuple[tuple[int, ...], str]] = {
            "attn_q.weight": ((2 * q, e), "2 (query, gate) x num_attention_heads x head_dim, hidden_size"),
            "attn_output.weight": ((e, q), "hidden_size, num_attention_heads x head_dim"),
            "attn_qkv.weight": ((2 * key_dim + value_dim, e), f"2 x {lin} + {vals}, hidden_size"),
            "attn_gate.weight": ((value_dim, e), f"{vals}, hidden_size"),
            "ssm_conv1d.weight": ((2 * key_dim + value_dim, self.d_conv),
                                  f"2 x {lin} + {vals}, linear_conv_kernel_dim"),
            "ssm_beta.weight": ((self.n_v, e), "linear_num_value_heads, hidden_size"),
            "ssm_alpha.weight": ((self.n_v, e), "linear_num_value_heads, hidden_size"),
            "ssm_dt.bias": ((self.n_v,), "linear_num_value_heads"),
            "ssm_a": ((self.n_v,), "linear_num_value_heads"),
            "ssm_norm.weight": ((self.v_dim,), "linear_value_head_dim"),
            "ssm_out.weight": ((e, value_dim), f"hidden_size, {vals}"),
        }
        if self.moe:
            n, f, s = self.config["num_experts"], self.config["moe_intermediate_size"], \
                self.config["shared_expert_intermediate_size"]
            table.update({
                "ffn_gate_inp.weight": ((n, e), "num_experts, hidden_size"),
                "ffn_gate_exps.weight": ((n, f, e), "num_experts, moe_intermediate_size, hidden_size"),
                "ffn_up_exps.weight": ((n, f, e), "num_experts, moe_intermediate_size, hidden_size"),
                "ffn_down_exps.weight": ((n, e, f), "num_experts, hidden_size, moe_intermediate_size"),
                "ffn_gate_inp_shexp.weight": ((e,), "hidden_size"),
                "ffn_gate_shexp.weight": ((s, e), "shared_expert_intermediate_size, hidden_size"),
                "ffn_up_shexp.weight": ((s, e), "shared_expert_intermediate_size, hidden_size"),
                "ffn_down_shexp.weight": ((e, s), "hidden_size, shared_expert_intermediate_size"),
            })
        short = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name
        return table.get(short) or super().expected_shape(gguf_name)

    def check_complete(self, names: set[str]) -> None:
        need = ["token_embd.weight", "output_norm.weight"] + ([] if self.tied else ["output.weight"])
        ffn = _MOE_FFN if self.moe else _DENSE_FFN
        for b, rec in enumerate(self.recurrent):
            need += [f"blk.{b}.{t}" for t in (_LINEAR if rec else _FULL) + ffn]
        missing = [n for n in need if n not in names]
        if missing:
            b = missing[0].split(".")[1] if missing[0].startswith("blk.") else None
            kind = f" ({self.layer_types[int(b)]} layer {b})" if b is not None else ""
            raise ForgeError(f"the checkpoint lacks tensor {missing[0]} (GGUF name){kind} and {len(missing) - 1} "
                             f"more that {self.arch_name} needs; is the download complete, and do layer_types match "
                             "the weights?")
        extra = sorted(n for n in names if n.startswith("blk.") and n.split(".", 2)[-1]
                       in set(_LINEAR + _FULL) - set(_LINEAR if self.recurrent[int(n.split(".")[1])] else _FULL))
        if extra:
            b = int(extra[0].split(".")[1])
            raise ForgeError(f"tensor {extra[0]} (GGUF name) belongs to the other kind of layer than config.json's "
                             f"layer_types says for layer {b} ({self.layer_types[b]}); the weights do not match "
                             "the config")

    # -- metadata ------------------------------------------------------------------------
    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        self.add_common_hparams(w)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_rope_dimension_count(self.n_rot)
        w.add_rope_dimension_sections(self.sections)
        self.add_rope_scaling(w)
        w.add_ssm_conv_kernel(self.d_conv)
        w.add_ssm_state_size(self.k_dim)
        w.add_ssm_group_count(self.n_k)
        w.add_ssm_time_step_rank(self.n_v)
        w.add_ssm_inner_size(self.v_dim * self.n_v)
        w.add_array(f"{self.arch_name}.attention.recurrent_layers", self.recurrent)
        interval = self.config.get("full_attention_interval")
        if interval is None:  # the period of layer_types, when it has one
            fulls = [i + 1 for i, r in enumerate(self.recurrent) if not r]
            if fulls and all(r == bool((i + 1) % fulls[0]) for i, r in enumerate(self.recurrent)):
                interval = fulls[0]
        if isinstance(interval, int) and interval > 0:
            w.add_full_attention_interval(interval)
        if self.moe:
            c = self.config
            w.add_expert_count(c["num_experts"])
            w.add_expert_used_count(c["num_experts_per_tok"])
            w.add_expert_feed_forward_length(c["moe_intermediate_size"])
            w.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])


@register("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration")
class Qwen35(_Qwen35):
    pass


@register("Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration")
class Qwen35Moe(_Qwen35):
    gguf_arch = gguf.MODEL_ARCH.QWEN35MOE
    moe = True

    def assemblies(self, tensors: Mapping[str, TensorRef]) -> list[Assembly]:
        prefix = self._text_prefix(tensors)
        out: list[Assembly] = []
        for b in range(self.n_layer):
            found = self.expert_assemblies(tensors, b, f"{prefix}layers.{b}.mlp.experts", self.config["num_experts"],
                                           self.config["moe_intermediate_size"])
            if not found:
                raise ForgeError(f"the checkpoint lacks layer {b}'s experts ({prefix}layers.{b}.mlp.experts.*); "
                                 f"{self.arch_name} has experts in every layer; is the download complete?")
            out += found
        return out
