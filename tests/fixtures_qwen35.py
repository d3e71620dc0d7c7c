"""Tiny Qwen3.5 / Qwen3.6 checkpoints (dense, MoE, and the multimodal ConditionalGeneration layout), built with
transformers' own classes from shrunk copies of the real configurations (Qwen3.5-9B, Qwen3.5-35B-A3B), seeded random
weights, the Qwen-style trained tokenizer, cached like every fixture (fixtures._cached).

Shrunk, not changed: layer pattern every 4th layer full attention (``full_attention_interval`` 4, so layers 0-2 and 4-6
are Gated DeltaNet linear attention and 3 and 7 gated full attention), partial rotary 0.25 with interleaved MRoPE
sections, twice as many linear-attention value heads as key heads (so llama.cpp's grouped -> tiled V-head reorder
matters), bf16 weights as released.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fixtures import _cached, _qwen_tokenizer, _random_model, _save_model, _write_card

_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

#: Qwen3.5-9B's text config, shrunk (hidden 4096 -> 64, 32 -> 8 layers, heads 16/4 -> 4/2, head_dim 256 -> 32,
#: linear heads 16/32 x 128 -> 2/4 x 16); mrope sections scaled to head_dim 32 x 0.25 / 2 = 4 rotary pairs
TEXT = dict(
    hidden_size=64, intermediate_size=160, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
    linear_num_value_heads=4, full_attention_interval=4, max_position_embeddings=262144, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                     "mrope_section": [2, 1, 1], "mrope_interleaved": True},
)
#: Qwen3.5-35B-A3B's MoE part, shrunk (256 experts, 8 used, expert width 512, shared 512 -> 8, 2, 32, 48)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)


def _qwen35_tokenizer(out: Path) -> int:
    """The Qwen-style trained tokenizer with Qwen3.5's pre-tokenizer split (letters take combining marks along:
    ``[\\p{L}\\p{M}]+``), as the released tokenizer.json has it; llama.cpp knows it as pre ``qwen35``."""
    from gguf_forge.convert.pretokenizer import QWEN35

    n = _qwen_tokenizer(out)
    path = out / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    split = data["pre_tokenizer"]["pretokenizers"][0]
    assert split["type"] == "Split", split
    split["pattern"] = {"Regex": QWEN35}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return n


def _text_config(cls, n: int, moe: bool, tied: bool):
    kw = {k: v for k, v in TEXT.items() if not (moe and k == "intermediate_size")}
    if moe:
        kw.update(MOE)
    return cls(vocab_size=n, eos_token_id=n - 1, tie_word_embeddings=tied, **kw)


def qwen35() -> Path:
    """Qwen3.5 dense (``Qwen3_5ForCausalLM``), tied embeddings as the small Qwen3.5 models have."""

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

        n = _qwen35_tokenizer(out)
        model = _random_model(Qwen3_5ForCausalLM, _text_config(Qwen3_5TextConfig, n, False, True), 0.35)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["zh", "en"], "Qwen/Qwen3.5-9B", "Tiny-Qwen3.5")

    return _cached("qwen35", build, _SOURCE)


def qwen35_moe() -> Path:
    """Qwen3.5 MoE (``Qwen3_5MoeForCausalLM``): experts + shared expert with its sigmoid gate in every layer,
    untied; saved by transformers 5's ``save_pretrained`` (per-expert 2-D tensors, as the hub checkpoints)."""

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

        n = _qwen35_tokenizer(out)
        model = _random_model(Qwen3_5MoeForCausalLM, _text_config(Qwen3_5MoeTextConfig, n, True, False), 0.35)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["zh", "en"], "Qwen/Qwen3.5-35B-A3B", "Tiny-Qwen3.5-MoE")

    return _cached("qwen35_moe", build, _SOURCE)


def _multimodal(name: str, moe: bool) -> Path:
    """``Qwen3_5[Moe]ForConditionalGeneration`` with a tiny vision tower, whose language model holds exactly the
    weights of :func:`qwen35` / :func:`qwen35_moe` (so its text part must convert to the same GGUF tensors)."""
    text_src = qwen35_moe() if moe else qwen35()

    def build(out: Path) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        kind = "Qwen3_5Moe" if moe else "Qwen3_5"
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (text_src / f).is_file():
                (out / f).write_bytes((text_src / f).read_bytes())
        text = AutoModelForCausalLM.from_pretrained(text_src, dtype=torch.float32)
        text_cfg = json.loads((text_src / "config.json").read_text())
        for k in ("architectures", "dtype", "torch_dtype", "transformers_version"):
            text_cfg.pop(k, None)
        cfg = getattr(transformers, f"{kind}Config")(
            text_config=text_cfg, tie_word_embeddings=text_cfg["tie_word_embeddings"],
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
                               spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                               num_position_embeddings=16),
        )
        model = _random_model(getattr(transformers, f"{kind}ForConditionalGeneration"), cfg, 0.35)
        missing, unexpected = model.model.language_model.load_state_dict(text.model.state_dict(), strict=False)
        assert not missing and not unexpected, (missing, unexpected)
        model.lm_head.load_state_dict(text.lm_head.state_dict())
        model.tie_weights()
        _save_model(model, out, torch.bfloat16)
        base = "Qwen/Qwen3.6-35B-A3B" if moe else "Qwen/Qwen3.5-9B"
        _write_card(out, "apache-2.0", ["zh", "en"], base, f"Tiny-{kind}-VL")

    return _cached(name, build, _SOURCE, text_src.name)


def qwen35_vl() -> Path:
    return _multimodal("qwen35_vl", False)


def qwen35_moe_vl() -> Path:
    """The MoE one, as Qwen3.5-35B-A3B / Qwen3.6-35B-A3B are released."""
    return _multimodal("qwen35_moe_vl", True)


def _wide(name: str, moe: bool) -> Path:
    """256-wide variants (every row a whole number of K-quant blocks, so a Q4_K_M really holds Q4_K/Q6_K tensors
    for the Gated DeltaNet, attention and expert weights rather than llama.cpp's fallback types); 4 layers, the
    tokenizer of :func:`qwen35`."""
    tok_src = qwen35()

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3_5TextConfig

        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tok_src / f).is_file():
                (out / f).write_bytes((tok_src / f).read_bytes())
        n = json.loads((tok_src / "config.json").read_text())["vocab_size"]
        kw = dict(TEXT, hidden_size=256, intermediate_size=512, num_hidden_layers=4, head_dim=64,
                  linear_key_head_dim=64, linear_value_head_dim=64)
        if moe:
            kw.pop("intermediate_size")
            kw.update(MOE, moe_intermediate_size=256, shared_expert_intermediate_size=256)
        cls, cfg_cls = (Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig) if moe else (Qwen3_5ForCausalLM, Qwen3_5TextConfig)
        model = _random_model(cls, cfg_cls(vocab_size=n, eos_token_id=n - 1, tie_word_embeddings=False, **kw), 0.15)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["zh", "en"], "Qwen/Qwen3.5-9B", f"Tiny-Qwen3.5{'-MoE' if moe else ''}-K")

    return _cached(name, build, _SOURCE, tok_src.name)


def qwen35_k() -> Path:
    return _wide("qwen35_k", False)


def qwen35_moe_k() -> Path:
    return _wide("qwen35_moe_k", True)


ALL = {"qwen35": qwen35, "qwen35_moe": qwen35_moe, "qwen35_vl": qwen35_vl, "qwen35_moe_vl": qwen35_moe_vl,
       "qwen35_k": qwen35_k, "qwen35_moe_k": qwen35_moe_k}
