"""The GGUF computes what the Hugging Face model computes: next-token logits through llama-cpp-python."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import FIXTURES, fixture_dir
from parity import N_TOKENS, gguf_logits, hf_logits, probe_tokens

# float32 GGUF vs float32 PyTorch: the only differences are summation order and llama.cpp's rope/softmax
# kernels. Measured max |diff| is ~1e-4 on logits of magnitude ~10-40; the bound leaves an order of margin.
F32_MAX_ABS_DIFF = 1e-3
# Gemma's GELU is computed by llama.cpp's CPU backend through a float16 lookup table (GGML_GELU_FP16 in
# ggml-cpu/vec.h), which costs ~1e-3 relative error per activation: measured 2.4e-2 on Gemma 3 270M (logits
# -56..24) and 5.9e-2 on the tiny random Gemma 2 (logits -25..25; the same within and beyond its sliding window).
BOUNDS = {"gemma3": 0.1, "gemma2": 0.1}


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_f32_gguf_matches_hugging_face_logits(name, converted):
    from transformers import AutoTokenizer

    model_dir = fixture_dir(name)
    tokens = probe_tokens(AutoTokenizer.from_pretrained(model_dir))
    want = hf_logits(model_dir, tokens)
    got = gguf_logits(converted(name, "f32"), tokens)
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    same = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"{name}: max |logit diff| {diff:.2e} (logit range {want.min():.1f}..{want.max():.1f}), argmax agreement {same:.1%}")
    assert same == 1.0, f"{name}: argmax differs at {int((1 - same) * N_TOKENS)} of {N_TOKENS} positions"
    assert diff < BOUNDS.get(name, F32_MAX_ABS_DIFF)


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["bf16", "f16", "q8_0"])
def test_smollm2_lower_precision_outputs_agree(outtype, converted):
    """bf16/f16/q8_0 files load and pick the same next token as the original on >= 95% of positions.

    Measured on English text: on the mixed probe's Chinese opening, which the English-only SmolLM2 cannot
    predict, near-ties make q8_0 agree on 91% only, exactly as llama.cpp's own Q8_0 quantizer does.
    """
    from transformers import AutoTokenizer

    model_dir = fixture_dir("smollm2")
    tokens = probe_tokens(AutoTokenizer.from_pretrained(model_dir), english=True)
    want = hf_logits(model_dir, tokens)
    got = gguf_logits(converted("smollm2", outtype), tokens)
    same = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"smollm2 {outtype}: argmax agreement {same:.1%}")
    assert same >= 0.95


@pytest.mark.slow
def test_q8_0_equals_llama_cpp_quantizer(converted, tmp_path):
    """Our numpy Q8_0 writes the very bytes llama.cpp's own quantizer makes from the f32 file."""
    import ctypes

    import gguf
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 2
    ref = tmp_path / "ref-Q8_0.gguf"
    rc = llama_cpp.llama_model_quantize(str(converted("smollm2", "f32")).encode(), str(ref).encode(), ctypes.byref(params))
    assert rc == 0
    ours = {t.name: t for t in gguf.GGUFReader(converted("smollm2", "q8_0")).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(ref).tensors}
    assert ours.keys() == theirs.keys()
    for name, t in ours.items():
        u = theirs[name]
        assert t.tensor_type == u.tensor_type, name
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)), name
