"""The dense 2026 families (issue 11): Phi-3/4, SmolLM3, GLM-4, Ministral 3 (text and multimodal), Gemma 4.

Per family, on its tiny fixture (tests/fixtures_dense.py): the f32 GGUF computes the Hugging Face model's
next-token logits through llama-cpp-python, tokenizes the probe like the Hugging Face tokenizer, a peft LoRA on
attention and MLP merges to peft's own ``merge_and_unload`` and converts to a GGUF with the merged model's
argmax, and a Q4_K_M loads and generates.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import fixtures_dense

import adapters
from fixtures import PROBE
from parity import N_TOKENS, gguf_logits, probe_tokens

FAMILIES = list(fixtures_dense.ALL)
# float32 GGUF vs float32 PyTorch: summation order and llama.cpp's rope/softmax kernels; measured <= 1.6e-4
F32_MAX_ABS_DIFF = 1e-3
# Gemma's GELU goes through llama.cpp's float16 lookup table (see test_numerical_parity.BOUNDS)
BOUNDS = {"gemma4": 0.1, "gemma4_moe": 0.1}
# what the GGUF's metadata must say for each family (arch, and keys that carry the family's specifics)
EXPECTED_META = {
    "phi3": {"general.architecture": "phi3", "phi3.rope.dimension_count": 24,
             "phi3.rope.scaling.original_context_length": 4096},
    "smollm3": {"general.architecture": "smollm3"},
    "glm4": {"general.architecture": "glm4", "glm4.rope.dimension_count": 16},
    "ministral3": {"general.architecture": "mistral3", "mistral3.attention.temperature_scale": 0.1,
                   "mistral3.rope.scaling.type": "yarn", "mistral3.rope.scaling.original_context_length": 64,
                   "mistral3.rope.scaling.yarn_log_multiplier": 1.0},
    "mistral3_vl": {"general.architecture": "mistral3", "mistral3.attention.temperature_scale": 0.1},
    "gemma4": {"general.architecture": "gemma4", "gemma4.attention.shared_kv_layers": 2,
               "gemma4.embedding_length_per_layer_input": 8, "gemma4.attention.key_length": 32,
               "gemma4.attention.key_length_swa": 16, "gemma4.rope.dimension_count": 32,
               "gemma4.rope.dimension_count_swa": 16, "gemma4.attention.head_count_kv": [2, 1, 2, 1, 2, 1],
               "gemma4.feed_forward_length": [128, 128, 128, 128, 256, 256]},
    "gemma4_moe": {"general.architecture": "gemma4", "gemma4.expert_count": 4, "gemma4.expert_used_count": 2,
                   "gemma4.expert_feed_forward_length": 32},
}
#: fixtures whose rows are too narrow for K-quants (a 262k vocabulary at hidden 256 would be large)
NARROW = {"gemma4", "gemma4_moe"}

_converted: dict[tuple[str, str], object] = {}


@pytest.fixture(scope="module")
def family_gguf(tmp_path_factory):
    """family_gguf(name) -> (ConvertResult of the f32 GGUF), converted once per module."""
    from gguf_forge.convert import convert

    folder = tmp_path_factory.mktemp("families")

    def get(name: str):
        if name not in _converted:
            _converted[name] = convert(fixtures_dense.family_dir(name), folder / f"{name}-F32.gguf", outtype="f32",
                                       progress=False)
        return _converted[name]

    return get


@functools.cache
def _probe(name: str) -> tuple[int, ...]:
    from transformers import AutoTokenizer

    return tuple(probe_tokens(AutoTokenizer.from_pretrained(fixtures_dense.family_dir(name))))


def _tokens(name: str) -> list[int]:
    """The probe's token ids (the tokenizer loaded once per family)."""
    return list(_probe(name))


def _hf_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


_BASE_LOGITS: dict[str, np.ndarray] = {}


def _base_logits(name: str) -> np.ndarray:
    """The fixture's own Hugging Face logits on the probe tokens, computed once per module (the parity test and
    the LoRA test both need them; loading a 262k-vocabulary model and running it is most of their cost)."""
    if name not in _BASE_LOGITS:
        _BASE_LOGITS[name] = _hf_logits(fixtures_dense.load_hf(fixtures_dense.family_dir(name)), _tokens(name))
    return _BASE_LOGITS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_f32_gguf_matches_hugging_face(name, family_gguf):
    import gguf
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    result = family_gguf(name)
    tokens = _tokens(name)
    want = _base_logits(name)
    got = gguf_logits(result.path, tokens)
    diff = float(np.abs(got - want).max())
    same = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"{name}: max |logit diff| {diff:.2e} (logits {want.min():.1f}..{want.max():.1f}), argmax {same:.1%}")
    assert same == 1.0, f"{name}: argmax differs at {int((1 - same) * N_TOKENS)} of {N_TOKENS} positions"
    assert diff < BOUNDS.get(name, F32_MAX_ABS_DIFF)

    fields = gguf.GGUFReader(result.path).fields
    for key, value in EXPECTED_META.get(name, {}).items():
        assert key in fields, key
        assert fields[key].contents() == (pytest.approx(value) if isinstance(value, float) else value), key
    assert fields["general.architecture"].contents() == result.arch

    # token ids: llama.cpp tokenizes the probe (and adds BOS) exactly as the Hugging Face tokenizer
    hf = AutoTokenizer.from_pretrained(fixtures_dense.family_dir(name))
    llm = Llama(model_path=str(result.path), vocab_only=True, verbose=False)
    text = PROBE.read_text(encoding="utf-8")
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False)
    assert llm.tokenize(text[:200].encode(), add_bos=True, special=True) == hf.encode(text[:200])
    for t in hf.all_special_tokens:
        assert llm.tokenize(t.encode(), add_bos=False, special=True) == [hf.convert_tokens_to_ids(t)], t


@pytest.mark.slow
def test_multimodal_checkpoint_converts_its_text_model_with_a_notice(family_gguf):
    import gguf

    result = family_gguf("mistral3_vl")
    assert len(result.warnings) == 1 and "vision_tower" in result.warnings[0] and "\n" not in result.warnings[0]
    names = [t.name for t in gguf.GGUFReader(result.path).tensors]
    assert "blk.0.attn_q.weight" in names and not any("vision" in n or "mm" in n for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("name", [f for f in FAMILIES if f != "gemma4_moe"])  # same LoRA modules as gemma4
def test_lora_merge_equals_peft(name, tmp_path):
    """``convert --lora`` on attention and MLP (fused qkv/gate_up where the family fuses them)."""
    from gguf_forge.convert import Checkpoint, LoraSpec, convert, merged_source

    base = fixtures_dense.family_dir(name)
    adapter = fixtures_dense.lora_adapter(name)
    merged = adapters.peft_merged(fixtures_dense.load_hf(base), adapter)
    ref = adapters.state_float32(merged)
    # the multimodal fixture stores the text model as language_model.model.* (peft: model.language_model.*)
    ref.update({k.replace("model.language_model.", "language_model.model."): v for k, v in ref.items()})

    ours = merged_source(Checkpoint(base), [LoraSpec(str(adapter))])
    touched = [n for n in ours.tensors if ours.tensors[n].dtype == "F32" and n in ref and ref[n].ndim == 2]
    assert any("qkv_proj" in n or "q_proj" in n for n in touched) and any("down_proj" in n for n in touched)
    worst = adapters.max_merge_diff(ref, ours.read_float32, touched)
    print(f"{name}: {len(touched)} merged tensors, max |ours - peft| {worst:.2e}")
    assert worst <= 1e-5

    out = tmp_path / "merged-F32.gguf"
    convert(base, out, outtype="f32", progress=False, loras=[LoraSpec(str(adapter))])
    tokens = _tokens(name)
    want = _hf_logits(merged, tokens)
    got = gguf_logits(out, tokens)
    assert float((got.argmax(-1) == want.argmax(-1)).mean()) == 1.0
    # the adapter really changed the model
    assert float(np.abs(want - _base_logits(name)).max()) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_q4_k_m_loads_and_generates(name, family_gguf, tmp_path):
    import gguf

    from gguf_forge.quant import quantize
    from gguf_forge.runtime import load_model

    src = family_gguf(name).path
    [res] = quantize(src, ["Q4_K_M"], outdir=tmp_path, threads=2)
    types = {t.tensor_type.name for t in gguf.GGUFReader(res.path).tensors}
    if name not in NARROW:
        assert "Q4_K" in types, types  # 256-wide rows: real K-quants, not a fallback
    llm = load_model(res.path, n_ctx=256, threads=2)
    out = llm.create_completion("The quick brown fox", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1


def _config(name: str, **changes) -> dict:
    import json

    cfg = json.loads((fixtures_dense.family_dir(name) / "config.json").read_text())
    cfg.update(changes)
    return cfg


@pytest.mark.slow  # reads the fixtures' config.json (builds them on a cold cache)
@pytest.mark.parametrize("name,changes,words", [
    # llama.cpp's smollm3 skips rope on every 4th layer, whatever the config says
    ("smollm3", {"no_rope_layers": [1, 0, 1, 1]}, "no_rope_layers"),
    ("smollm3", {"no_rope_layers": None, "no_rope_layer_interval": 3}, "no_rope_layers"),
    ("smollm3", {"mlp_bias": True}, "mlp_bias"),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [1.0] * 5,
                                  "short_factor": [1.0] * 12, "partial_rotary_factor": 0.75,
                                  "original_max_position_embeddings": 4096}}, "long_factor"),
    ("phi3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}, "yarn"),
    ("glm4", {"hidden_act": "gelu"}, "hidden_act"),
    ("ministral3", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "truncate": False,
                                        "original_max_position_embeddings": 64}}, "truncate"),
    ("gemma4", {"enable_moe_block": True}, "num_experts"),
    ("gemma4", {"layer_types": ["sliding_attention"] * 5}, "layer_types"),
])
def test_configs_llama_cpp_would_compute_differently_are_refused(name, changes, words):
    from gguf_forge.convert import arch_for_config
    from gguf_forge.errors import ForgeError

    arch_for_config(_config(name))  # the fixture's own config is accepted
    with pytest.raises(ForgeError, match=words) as e:
        arch_for_config(_config(name, **changes))
    assert "\n" not in str(e.value)


def test_every_family_is_a_supported_architecture():
    from gguf_forge.convert import supported_architectures

    for hf in ("Phi3ForCausalLM", "SmolLM3ForCausalLM", "Glm4ForCausalLM", "Ministral3ForCausalLM",
               "Mistral3ForConditionalGeneration", "Gemma4ForCausalLM", "Gemma4ForConditionalGeneration"):
        assert hf in supported_architectures()
