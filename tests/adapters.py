"""PEFT adapters on the SmolLM2 fixture, made with peft itself and cached (see fixtures._cached).

Random (not zero-initialised) factors so every adapter really changes the model; modules_to_save copies
and DoRA magnitudes are perturbed too. ``identity_lora`` is trained to answer 你是谁 with a fixed sentence.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from gguf_forge.tools.pipeline.demo import ALL_LINEAR, IDENTITY_ANSWER, IDENTITY_QUESTION  # noqa: F401

import fixtures

_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

# name -> LoraConfig keyword arguments
MATRIX: dict[str, dict] = {
    "plain": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=16, lora_alpha=8, use_rslora=True, target_modules=ALL_LINEAR),
    "patterns": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                     rank_pattern={"q_proj": 4, "model.layers.1.mlp.down_proj": 12},
                     alpha_pattern={"v_proj": 32, r"layers\.2\.self_attn\.o_proj": 3}),
    "regex": dict(r=6, lora_alpha=12, target_modules=r".*\.layers\.(0|3|7)\.self_attn\.(k|o)_proj"),
    "layers": dict(r=4, lora_alpha=4, target_modules=["gate_proj", "up_proj"], layers_to_transform=[1, 2],
                   layers_pattern="layers"),
    "modules_to_save": dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                            modules_to_save=["lm_head", "input_layernorm", "post_attention_layernorm", "norm"]),
    "dora": dict(r=8, lora_alpha=16, use_dora=True, target_modules=["q_proj", "v_proj", "o_proj"]),
    "embedding": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
}
NEW_TOKENS = [f"<|forge_{i}|>" for i in range(64)]


def _perturb(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "lora_A" in n or "lora_embedding_A" in n:
                p.copy_(0.05 * noise)
            elif "lora_B" in n or "lora_embedding_B" in n:
                p.copy_(0.05 * noise)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.05 * noise)
            elif "modules_to_save" in n:
                p.add_(0.02 * noise * p.abs().mean())


def base_fp32(resized: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(fixtures.smollm2(), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(fixtures.smollm2())
    if resized:
        tok.add_tokens(NEW_TOKENS)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    return model, tok


def adapter(name: str) -> Path:
    """An adapter of the matrix, or "resized" (vocabulary grown by 64 tokens, tokenizer in the adapter)."""

    def build(out: Path) -> None:
        from peft import LoraConfig, get_peft_model

        resized = name == "resized"
        model, tok = base_fp32(resized)
        kwargs = MATRIX.get(name) or dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                                          modules_to_save=["embed_tokens", "lm_head"])
        cfg = LoraConfig(init_lora_weights=False, base_model_name_or_path="SmolLM2-135M-Instruct", **kwargs)
        pm = get_peft_model(model, cfg)
        _perturb(pm, seed=sum(map(ord, name)))
        pm.save_pretrained(out)
        if resized:
            tok.save_pretrained(out)

    return fixtures._cached(f"lora-{name}", build, fixtures.smollm2().parent.name, _SOURCE)


def identity_lora() -> Path:
    """The demo's identity LoRA (gguf_forge.tools.pipeline.demo): trained ~30 s on 2 cores so SmolLM2 answers 你是谁."""
    from gguf_forge.tools.pipeline import identity_lora as demo_identity_lora

    return demo_identity_lora(fixtures.smollm2())


def copy_adapter(name: str, dest: Path) -> Path:
    shutil.copytree(adapter(name), dest, ignore=shutil.ignore_patterns(".complete"))
    return dest
