"""Logits of a GGUF (through llama-cpp-python) and of its Hugging Face model on the probe text, for parity tests."""

from __future__ import annotations

import numpy as np

from gguf_forge.runtime import load_model

from fixtures import PROBE

N_TOKENS = 256


def probe_tokens(tok, english: bool = False) -> list[int]:
    text = PROBE.read_text(encoding="utf-8")
    if english:  # the English passage: text the (English-only) SmolLM2 predicts with clear margins
        text = text[text.index("A longer English passage"):]
    ids = tok.encode(text, add_special_tokens=True)
    assert len(ids) >= N_TOKENS
    return ids[:N_TOKENS]


def hf_logits(model_dir, tokens: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def gguf_logits(path, tokens: list[int]) -> np.ndarray:
    # load_model: the way every command loads (safe on AMX CPUs)
    llm = load_model(path, n_ctx=512, n_batch=512, n_ubatch=512, logits_all=True, threads=2, seed=0, type_k=0,
                     type_v=0)  # float32 KV cache (default is f16)
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)
