"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B) -> GGUF ``qwen3moe``.

Qwen3's attention (NEOX rope, per-head Q/K RMS norms) with a mixture of experts in every layer: the router
``mlp.gate`` -> ``ffn_gate_inp``; the experts -> llama.cpp's 3-D ``ffn_{gate,up,down}_exps`` (stacked while
streaming, from per-expert tensors as hub checkpoints and transformers' ``save_pretrained`` store them, or from
transformers 5's fused ``experts.gate_up_proj`` / ``experts.down_proj``: see
:meth:`~gguf_forge.convert.arch.Architecture.expert_assemblies`).

What llama.cpp's ``qwen3moe`` graph cannot express is refused rather than converted into a model that computes
something else: it runs experts in every layer (no dense layers: ``decoder_sparse_step`` 1 and empty
``mlp_only_layers``) and always renormalises the top-k routing weights (``norm_topk_prob`` true), as every released
Qwen3-MoE does.
"""

from __future__ import annotations

from typing import Mapping

import gguf

from ...errors import ForgeError
from ..checkpoint import TensorRef
from . import Assembly, register
from .qwen3 import Qwen3


@register("Qwen3MoeForCausalLM")
class Qwen3Moe(Qwen3):
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
    required_block_tensors = (
        "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "attn_q_norm.weight", "attn_k_norm.weight", "ffn_norm.weight", "ffn_gate_inp.weight",
        "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
    )
    fused_experts = "out_in"

    def __init__(self, config: dict):
        super().__init__(config)
        c = self.config
        n_expert = c.get("num_experts", c.get("num_local_experts"))
        used = c.get("num_experts_per_tok")
        ff = c.get("moe_intermediate_size")
        for key, val in (("num_experts", n_expert), ("num_experts_per_tok", used), ("moe_intermediate_size", ff)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ForgeError(f"config.json: {key} must be a positive integer for a Qwen3-MoE model, got {val!r}")
        if used > n_expert:
            raise ForgeError(f"config.json: num_experts_per_tok {used} exceeds num_experts {n_expert}")
        self.n_expert, self.n_expert_used, self.n_ff_exp = n_expert, used, ff
        step = c.get("decoder_sparse_step", 1)
        dense = [i for i in (c.get("mlp_only_layers") or []) if isinstance(i, int) and 0 <= i < self.n_layer]
        if step != 1 or dense:
            which = f"mlp_only_layers {dense}" if dense else f"decoder_sparse_step {step}"
            raise ForgeError(f"config.json: {which} makes some layers dense, which llama.cpp's qwen3moe cannot run "
                             "(it expects experts in every layer)")
        if c.get("norm_topk_prob") is False:
            raise ForgeError("config.json: norm_topk_prob is false, but llama.cpp's qwen3moe always renormalises the "
                             "top-k expert weights; the converted model would compute something else")

    def assemblies(self, tensors: Mapping[str, TensorRef]) -> list[Assembly]:
        out: list[Assembly] = []
        for b in range(self.n_layer):
            out += self.expert_assemblies(tensors, b, f"model.layers.{b}.mlp.experts", self.n_expert, self.n_ff_exp)
        return out

    def expected_shape(self, gguf_name: str) -> tuple[tuple[int, ...], str] | None:
        e, f, h = self.n_expert, self.n_ff_exp, self.n_embd
        short = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name
        table = {
            "ffn_gate_inp.weight": ((e, h), "num_experts, hidden_size"),
            "ffn_gate_exps.weight": ((e, f, h), "num_experts, moe_intermediate_size, hidden_size"),
            "ffn_up_exps.weight": ((e, f, h), "num_experts, moe_intermediate_size, hidden_size"),
            "ffn_down_exps.weight": ((e, h, f), "num_experts, hidden_size, moe_intermediate_size"),
        }
        return table.get(short) or super().expected_shape(gguf_name)

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_feed_forward_length(self.n_ff_exp)
