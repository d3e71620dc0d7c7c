"""Tiny MoE checkpoints (Qwen3-MoE, gpt-oss), built with transformers' own classes from shrunk copies of the real
configurations (Qwen3-30B-A3B, gpt-oss-20b), seeded random weights, cached like every fixture (fixtures._cached).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fixtures import _cached, _qwen_tokenizer, _random_model, _save_model, _write_card

_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def qwen3_moe() -> Path:
    """Qwen3-30B-A3B shrunk: 4 layers (every one MoE, as in the real model), 8 experts (2 used per token),
    renormalised top-k, head_dim 32 != hidden/heads, bf16 weights as released, the Qwen-style trained tokenizer;
    saved by transformers 5's ``save_pretrained``, i.e. per-expert 2-D tensors like the hub checkpoint."""

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        n = _qwen_tokenizer(out)
        cfg = Qwen3MoeConfig(
            vocab_size=n, hidden_size=64, intermediate_size=192, moe_intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1000000.0,
            rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=False, eos_token_id=n - 1,
        )
        model = _random_model(Qwen3MoeForCausalLM, cfg, 0.35)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["en"], "Qwen/Qwen3-30B-A3B", "Tiny-Qwen3-MoE")

    return _cached("qwen3_moe", build, _SOURCE)


ALL = {"qwen3_moe": qwen3_moe}
