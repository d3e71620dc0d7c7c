"""Mixture-of-experts families: Qwen3-MoE (qwen3moe) and gpt-oss (gpt-oss), including MXFP4 experts.

Experts are assembled into llama.cpp's 3-D tensors while streaming (convert.arch.Assembly); the f32 GGUF computes
what transformers computes (argmax at every probe position, max |diff| bounded), tokenizes like the Hugging Face
tokenizer, quantizes to Q4_K_M and generates; configurations llama.cpp cannot run are one-line errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import fixtures_moe

from fixtures import PROBE
from helpers import assert_user_error, run
from parity import N_TOKENS, gguf_logits, hf_logits, probe_tokens

# f32 GGUF vs f32 transformers; measured (see the closing note): qwen3_moe 8.4e-5; gpt_oss 1.8e-3 and
# gpt_oss_mxfp4 (dequantized exactly for f32) 2.1e-3, above 1e-3 at 4 of 256 positions: with default rope instead
# of yarn the maximum is 1.1e-3 (llama.cpp computes yarn's interpolated angles and 1.35 attention factor in
# float32), the rest is summation order through the clamped SwiGLU experts.
BOUNDS = {"qwen3_moe": 1e-3, "gpt_oss": 5e-3, "gpt_oss_mxfp4": 5e-3}
_GGUF: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from gguf_forge.convert import convert

    def get(name: str, outtype: str = "f32") -> Path:
        if (name, outtype) not in _GGUF:
            out = tmp_path_factory.mktemp("moe") / f"{name}-{outtype}.gguf"
            convert(fixtures_moe.ALL[name](), out, outtype=outtype, progress=False)
            _GGUF[name, outtype] = out
        return _GGUF[name, outtype]

    return get


def _tensors(path: Path) -> dict:
    import gguf

    return {t.name: t for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("name", list(fixtures_moe.ALL))
def test_f32_gguf_matches_transformers_and_tokenizes_alike(name, converted):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    model_dir = fixtures_moe.ALL[name]()
    tok = AutoTokenizer.from_pretrained(model_dir)
    path = converted(name)
    text = PROBE.read_text(encoding="utf-8")
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tok.encode(text, add_special_tokens=False)
    tokens = probe_tokens(tok)
    want, got = hf_logits(model_dir, tokens), gguf_logits(path, tokens)
    diff = float(np.abs(got - want).max())
    same = got.argmax(-1) == want.argmax(-1)
    print(f"{name}: max |logit diff| {diff:.2e} (logits {want.min():.1f}..{want.max():.1f}), argmax {same.mean():.1%}")
    assert same.all(), f"{name}: argmax differs at {int((~same).sum())} of {N_TOKENS} positions"
    assert diff < BOUNDS[name]


def test_experts_are_stacked_in_llama_cpp_layout(converted):
    """The 3-D expert tensors hold expert e's rows at [e]: checked against the checkpoint's per-expert tensors."""
    from gguf_forge.convert.checkpoint import Checkpoint

    ckpt = Checkpoint(fixtures_moe.qwen3_moe())
    t = _tensors(converted("qwen3_moe"))
    gate = np.asarray(t["blk.2.ffn_gate_exps.weight"].data)
    down = np.asarray(t["blk.2.ffn_down_exps.weight"].data)
    assert gate.shape == (8, 48, 64) and down.shape == (8, 64, 48)
    for e in (0, 5, 7):
        for arr, w in ((gate, "gate_proj"), (down, "down_proj")):
            np.testing.assert_array_equal(arr[e], ckpt.read_float32(f"model.layers.2.mlp.experts.{e}.{w}.weight"))


def _fused_copy(dest: Path) -> Path:
    """The Qwen3-MoE fixture with its experts fused as transformers 5 holds them in memory
    (``experts.gate_up_proj`` [E, 2 x ff, hidden], gate rows first; ``experts.down_proj`` [E, hidden, ff])."""
    import torch
    from safetensors.torch import load_file, save_file

    src = fixtures_moe.qwen3_moe()
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".complete", "model.safetensors"))
    sd = load_file(src / "model.safetensors")
    out = {k: v for k, v in sd.items() if ".mlp.experts." not in k}
    for b in range(4):
        p = f"model.layers.{b}.mlp.experts"
        gate = torch.stack([sd[f"{p}.{e}.gate_proj.weight"] for e in range(8)])
        up = torch.stack([sd[f"{p}.{e}.up_proj.weight"] for e in range(8)])
        out[f"{p}.gate_up_proj"] = torch.cat([gate, up], dim=1).contiguous()
        out[f"{p}.down_proj"] = torch.stack([sd[f"{p}.{e}.down_proj.weight"] for e in range(8)]).contiguous()
    save_file(out, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_fused_experts_convert_to_the_same_file_content(tmp_path, converted):
    from gguf_forge.convert import convert

    fused = _fused_copy(tmp_path / "fused")
    out = tmp_path / "fused.gguf"
    convert(fused, out, outtype="f32", progress=False)
    a, b = _tensors(converted("qwen3_moe")), _tensors(out)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name].data), np.asarray(b[name].data), err_msg=name)


def test_mxfp4_experts_stay_mxfp4_by_default_and_load(converted):
    import gguf

    from gguf_forge.runtime import load_model

    auto = converted("gpt_oss_mxfp4", "auto")
    t = _tensors(auto)
    for w in ("gate", "up", "down"):
        assert t[f"blk.1.ffn_{w}_exps.weight"].tensor_type == gguf.GGMLQuantizationType.MXFP4
    # the very values of the f32 file (which dequantized them exactly), in 4.25 bits per weight
    f32 = _tensors(converted("gpt_oss_mxfp4", "f32"))
    for w in ("gate", "down"):
        q = t[f"blk.3.ffn_{w}_exps.weight"]
        values = gguf.quants.dequantize(np.asarray(q.data), q.tensor_type)
        np.testing.assert_array_equal(values.reshape(-1), np.asarray(f32[f"blk.3.ffn_{w}_exps.weight"].data).reshape(-1))
    llm = load_model(auto, n_ctx=64)
    assert llm.create_completion("The", max_tokens=4, temperature=0.0)["usage"]["completion_tokens"] >= 1
    from gguf_forge.files import gguf_field, open_gguf

    assert gguf_field(open_gguf(auto), "general.file_type") == gguf.LlamaFileType.MOSTLY_MXFP4_MOE


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])
def test_q4_k_m_loads_and_generates(name, converted, tmp_path):
    from gguf_forge.runtime import load_model

    r = run("quant", str(converted(name, "f16" if name == "qwen3_moe" else "bf16")), "--type", "Q4_K_M",
            "-o", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    path = json.loads(r.stdout)[0]["output"]
    llm = load_model(path, n_ctx=128)
    out = llm.create_completion("The quick brown fox", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1


def _copy(name: str, dest: Path) -> Path:
    shutil.copytree(fixtures_moe.ALL[name](), dest, ignore=shutil.ignore_patterns(".complete"))
    return dest


def _edit(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(("name", "change", "words"), [
    ("qwen3_moe", {"norm_topk_prob": False}, ["norm_topk_prob", "renormalises"]),
    ("qwen3_moe", {"mlp_only_layers": [1]}, ["mlp_only_layers", "dense"]),
    ("qwen3_moe", {"decoder_sparse_step": 2}, ["decoder_sparse_step"]),
    ("qwen3_moe", {"num_experts": 16, "num_local_experts": 16}, ["experts.8.gate_proj.weight", "complete"]),
    ("qwen3_moe", {"moe_intermediate_size": 32}, ["experts.0.gate_proj.weight", "moe_intermediate_size"]),
    ("gpt_oss", {"swiglu_limit": 10.0}, ["swiglu_limit", "7.0"]),
    ("gpt_oss", {"num_local_experts": 4}, ["gate_up_proj", "config"]),
    ("gpt_oss", {"architectures": ["GptOss2ForCausalLM"]}, ["GptOss2ForCausalLM", "GptOssForCausalLM",
                                                            "Qwen3MoeForCausalLM", "LlamaForCausalLM"]),
])
def test_what_llama_cpp_cannot_run_is_a_one_line_error(tmp_path, name, change, words):
    m = _copy(name, tmp_path / "m")
    _edit(m / "config.json", **change)
    out = tmp_path / "out.gguf"
    assert_user_error(run("convert", str(m), "-o", str(out)), *words)
    assert not out.exists()


def test_missing_expert_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    m = _copy("qwen3_moe", tmp_path / "m")
    sd = load_file(m / "model.safetensors")
    del sd["model.layers.3.mlp.experts.6.up_proj.weight"]
    save_file(sd, m / "model.safetensors", metadata={"format": "pt"})
    assert_user_error(run("convert", str(m), "-o", str(tmp_path / "o.gguf")),
                      "model.layers.3.mlp.experts.6.up_proj.weight", "complete")


def test_per_expert_tensors_stack_bit_exactly_in_bf16(converted):
    """Per-expert tensors are read once in storage order (each expert's down, gate and up together) and each placed
    in its stacked tensor: the bf16 file's expert tensors equal the stacking of the checkpoint's, bit for bit."""
    from gguf_forge.convert.checkpoint import Checkpoint

    ckpt = Checkpoint(fixtures_moe.ALL["qwen3_moe"]())
    tensors = _tensors(converted("qwen3_moe", "bf16"))
    n_expert = ckpt.config.get("num_experts", ckpt.config.get("num_local_experts"))
    for b in range(ckpt.config["num_hidden_layers"]):
        for w in ("gate", "up", "down"):
            want = np.stack([ckpt.read(f"model.layers.{b}.mlp.experts.{e}.{w}_proj.weight") for e in range(n_expert)])
            got = tensors[f"blk.{b}.ffn_{w}_exps.weight"]
            assert got.tensor_type.name == "BF16"
            assert np.asarray(got.data).tobytes() == want.tobytes(), (b, w)


def test_nonfinite_expert_is_named_and_nothing_is_written(tmp_path):
    from safetensors.torch import load_file, save_file

    m = _copy("qwen3_moe", tmp_path / "m")
    sd = load_file(m / "model.safetensors")
    sd["model.layers.2.mlp.experts.5.up_proj.weight"][7, 3] = float("nan")
    save_file(sd, m / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "o.gguf"
    assert_user_error(run("convert", str(m), "-o", str(out), "--outtype", "bf16", "--no-progress"),
                      "model.layers.2.mlp.experts.5.up_proj.weight", "row 7")
    assert [f.name for f in tmp_path.iterdir()] == ["m"]  # no output, no temporary file left


def test_gpt_oss_truncate_false_is_noted(tmp_path):
    m = _copy("gpt_oss", tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg["rope_parameters"]["truncate"] = False
    (m / "config.json").write_text(json.dumps(cfg))
    r = run("convert", str(m), "-o", str(tmp_path / "o.gguf"), "--outtype", "f16")
    assert r.returncode == 0, r.stderr
    assert "truncate" in r.stderr


# -- LoRA on experts -------------------------------------------------------------------------------------------------
# Gemma 4 MoE: target_parameters only (its experts were never Linear modules), nested (both 3-D parameters) and
# single (down_proj, with the router's Linear)
LORA_CASES = [("qwen3_moe", "params"), ("qwen3_moe", "experts"), ("gpt_oss", "params"), ("gemma4_moe", "params"),
              ("gemma4_moe", "params-router")]


def _peft_merged(name: str, layout: str):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fixtures_moe.base(name), dtype=torch.float32)
    return PeftModel.from_pretrained(model, fixtures_moe.moe_lora(name, layout)).merge_and_unload()


def _max_merge_diff(merged_model, read) -> float:
    """max |ours - peft| over every tensor; ``read(name)`` gives our merged tensor (per-expert names where the
    checkpoint stores experts that way, the fused parameter's otherwise)."""
    worst = 0.0
    for k, v in merged_model.state_dict().items():
        v = v.float().numpy()
        p = k.rsplit(".", 1)[0]
        got = read(k)
        if got is None and k == "lm_head.weight" and merged_model.config.get_text_config().tie_word_embeddings:
            continue  # tied: the embedding, compared under its own name
        if got is None and k.endswith("experts.gate_up_proj"):
            got = np.stack([np.concatenate([read(f"{p}.{e}.gate_proj.weight"), read(f"{p}.{e}.up_proj.weight")])
                            for e in range(v.shape[0])])
        elif got is None and k.endswith("experts.down_proj"):
            got = np.stack([read(f"{p}.{e}.down_proj.weight") for e in range(v.shape[0])])
        assert got is not None, k
        worst = max(worst, float(np.abs(got.reshape(v.shape) - v).max()))
    return worst


@pytest.mark.parametrize(("name", "layout"), LORA_CASES)
def test_lora_on_experts_merges_like_peft(name, layout, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from gguf_forge.convert import convert
    from gguf_forge.convert.checkpoint import Checkpoint
    from gguf_forge.convert.lora import LoraSpec, merged_source

    base, adapter = fixtures_moe.base(name), fixtures_moe.moe_lora(name, layout)
    peft_model = _peft_merged(name, layout)
    ours = merged_source(Checkpoint(base), [LoraSpec(str(adapter))])
    diff = _max_merge_diff(peft_model, lambda n: ours.read_float32(n) if n in ours.tensors else None)
    print(f"{name}/{layout}: max |merged - peft| {diff:.1e}")
    assert diff <= 1e-5

    out = tmp_path / "merged.gguf"
    convert(base, out, outtype="f32", loras=[LoraSpec(str(adapter))], progress=False)
    tokens = probe_tokens(AutoTokenizer.from_pretrained(base))
    with torch.no_grad():
        want = peft_model(torch.tensor([tokens])).logits[0].float().numpy()
    got = gguf_logits(out, tokens)
    plain = hf_logits(base, tokens)
    # the adapter really changes the model: the next token at most positions; Gemma 4 (its norms and final
    # soft-capping damp a small random adapter) the logits by more than 0.1, as in test_families
    if name == "gemma4_moe":
        assert float(np.abs(want - plain).max()) > 0.1
    else:
        assert (want.argmax(-1) != plain.argmax(-1)).mean() > 0.5
    same = got.argmax(-1) == want.argmax(-1)
    print(f"{name}/{layout}: GGUF vs peft max |logit diff| {float(np.abs(got - want).max()):.2e}")
    assert same.all(), f"argmax differs at {int((~same).sum())} of {N_TOKENS} positions"


def test_quantize_merge_writes_what_peft_merges(tmp_path):
    """``quantize merge`` with LoRA on fused 3-D experts (gpt-oss): the written checkpoint loads in transformers and
    holds peft's merged weights."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    r = run("merge", "--base", str(fixtures_moe.gpt_oss()), "--lora", str(fixtures_moe.moe_lora("gpt_oss", "params")),
            "-o", str(out), "--dtype", "f32")
    assert r.returncode == 0, r.stderr
    sd = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    diff = _max_merge_diff(_peft_merged("gpt_oss", "params"), lambda n: sd[n].float().numpy() if n in sd else None)
    assert diff <= 1e-5


def test_lora_on_mxfp4_experts_is_refused(tmp_path):
    r = run("convert", str(fixtures_moe.gpt_oss_mxfp4()), "--lora", str(fixtures_moe.moe_lora("gpt_oss", "params")),
            "-o", str(tmp_path / "x.gguf"))
    assert_user_error(r, "MXFP4", "gate_up_proj")


def test_params_lora_merges_the_same_into_fused_experts(tmp_path):
    """The same target_parameters adapter merged into a checkpoint holding fused experts gives, expert by expert,
    what it gives merged into the per-expert tensors (whose equality with peft is tested above)."""
    from gguf_forge.convert.checkpoint import Checkpoint
    from gguf_forge.convert.lora import LoraSpec, merged_source

    spec = [LoraSpec(str(fixtures_moe.moe_lora("qwen3_moe", "params")))]
    per = merged_source(Checkpoint(fixtures_moe.qwen3_moe()), spec)
    fused = merged_source(Checkpoint(_fused_copy(tmp_path / "fused")), spec)
    for b in (0, 3):
        p = f"model.layers.{b}.mlp.experts"
        gate_up, down = fused.read_float32(f"{p}.gate_up_proj"), fused.read_float32(f"{p}.down_proj")
        for e in range(8):
            np.testing.assert_array_equal(gate_up[e, :48], per.read_float32(f"{p}.{e}.gate_proj.weight"))
            np.testing.assert_array_equal(gate_up[e, 48:], per.read_float32(f"{p}.{e}.up_proj.weight"))
            np.testing.assert_array_equal(down[e], per.read_float32(f"{p}.{e}.down_proj.weight"))
