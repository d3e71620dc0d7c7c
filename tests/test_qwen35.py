"""Qwen3.5 / Qwen3.6 (dense ``qwen35``, MoE ``qwen35moe``, and the text part of the multimodal checkpoints): the
GGUF computes what transformers computes, tokenizes like the Hugging Face tokenizer, merges LoRA like peft, and a
Q4_K_M of it loads and generates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import fixtures_qwen35

import adapters
from helpers import assert_user_error, run
from parity import N_TOKENS, gguf_logits, hf_logits, probe_tokens

# float32 GGUF vs float32 transformers. The Gated DeltaNet recurrence is computed differently on each side
# (transformers' chunked WY form with a triangular solve per 64-token chunk; llama.cpp's own chunked/fused kernel), so
# the differences are larger than for plain attention models: on the dense fixture the measured max |diff| is 1.9e-3
# (logits -27..26, relative 1e-4), the same order as transformers' own two algorithms differ by on the same model
# (recurrent vs chunked: 1.1e-3). In the MoE fixture float32 itself is the limit: at probe tokens 230-234 a routing
# choice (layer 1, 2nd vs 3rd expert, logit gap 0.015 in float32 but 0.0006 in float64) differs between transformers
# in float32 and in float64, which are 0.18 apart there; the GGUF is 0.075 from float32 transformers at those tokens
# and within 1e-2 everywhere else (median 4e-4). The median bound catches any systematic error (a wrong tensor
# transform costs > 1 everywhere: without the V-head reorder the dense max |diff| is 41 and argmax agrees on 34%).
BOUNDS = {"qwen35": (5e-3, 5e-4), "qwen35_moe": (0.25, 2e-3)}  # (max, median of per-position max)
CASES = ["qwen35", "qwen35_moe"]

_converted: dict[tuple[str, str], Path] = {}
_hf: dict[str, np.ndarray] = {}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qwen35")


def converted(work: Path, name: str, outtype: str = "f32") -> Path:
    from gguf_forge.convert import convert

    key = (name, outtype)
    if key not in _converted:
        out = work / f"{name}-{outtype.upper()}.gguf"
        convert(fixtures_qwen35.ALL[name](), out, outtype=outtype, progress=False)
        _converted[key] = out
    return _converted[key]


def tokens_for(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    return probe_tokens(AutoTokenizer.from_pretrained(model_dir))


def reference_logits(name: str) -> np.ndarray:
    """transformers in float32 (its torch fallback of the Gated DeltaNet kernels: no fla / causal-conv1d needed)."""
    if name not in _hf:
        model_dir = fixtures_qwen35.ALL[name]()
        _hf[name] = hf_logits(model_dir, tokens_for(model_dir))
    return _hf[name]


def margins(logits: np.ndarray) -> np.ndarray:
    top = np.sort(logits, -1)
    return top[:, -1] - top[:, -2]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_f32_gguf_matches_transformers_logits(name, work):
    model_dir = fixtures_qwen35.ALL[name]()
    want = reference_logits(name)
    got = gguf_logits(converted(work, name), tokens_for(model_dir))
    assert got.shape == want.shape == (N_TOKENS, want.shape[1])
    per_pos = np.abs(got - want).max(-1)
    same = got.argmax(-1) == want.argmax(-1)
    print(f"{name}: max |logit diff| {per_pos.max():.2e} at token {int(per_pos.argmax())}, median {np.median(per_pos):.1e}"
          f" (logits {want.min():.1f}..{want.max():.1f}), argmax agreement {same.mean():.1%}, smallest top-2 margin "
          f"{margins(want).min():.3f}")
    assert same.all(), f"{name}: argmax differs at positions {np.where(~same)[0].tolist()}"
    bound, median = BOUNDS[name]
    assert per_pos.max() < bound and np.median(per_pos) < median


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_multimodal_checkpoint_converts_its_text_part_with_a_notice(name, work):
    """A Qwen3_5[Moe]ForConditionalGeneration checkpoint (text config under text_config, tensors under
    model.language_model., a vision tower) converts to exactly the tensors of the same text model saved alone, with
    one warning naming what was left out."""
    import gguf

    out = work / f"{name}-vl-F32.gguf"
    r = run("convert", str(fixtures_qwen35.ALL[f"{name}_vl"]()), "-o", str(out), "--outtype", "f32", "--no-progress")
    assert r.returncode == 0, r.stderr
    notes = [x for x in r.stderr.splitlines() if "only the text model" in x]
    assert len(notes) == 1 and "model.visual" in notes[0] and "Traceback" not in r.stderr, r.stderr
    ours = {t.name: t for t in gguf.GGUFReader(out).tensors}
    alone = {t.name: t for t in gguf.GGUFReader(converted(work, name)).tensors}
    assert ours.keys() == alone.keys()
    for n, t in ours.items():
        assert np.array_equal(np.asarray(t.data), np.asarray(alone[n].data)), n
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == ("qwen35moe" if "moe" in name
                                                                             else "qwen35")


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_metadata_and_tensor_types_llama_cpp_reads(name, work):
    import gguf

    cfg = json.loads((fixtures_qwen35.ALL[name]() / "config.json").read_text())
    reader = gguf.GGUFReader(converted(work, name, "f16"))
    arch = reader.fields["general.architecture"].contents()
    assert arch == ("qwen35moe" if "moe" in name else "qwen35")

    def get(key):
        return reader.fields[f"{arch}.{key}"].contents()

    assert get("attention.recurrent_layers") == [t == "linear_attention" for t in cfg["layer_types"]]
    assert get("full_attention_interval") == 4
    assert get("rope.dimension_count") == cfg["head_dim"] // 4  # partial_rotary_factor 0.25
    assert get("rope.dimension_sections") == [2, 1, 1, 0]
    assert get("attention.key_length") == get("attention.value_length") == cfg["head_dim"]
    assert (get("ssm.conv_kernel"), get("ssm.state_size"), get("ssm.group_count"), get("ssm.time_step_rank"),
            get("ssm.inner_size")) == (4, 16, 2, 4, 64)
    if "moe" in name:
        assert (get("expert_count"), get("expert_used_count"), get("expert_feed_forward_length"),
                get("expert_shared_feed_forward_length")) == (8, 2, 32, 48)
    types = {t.name: (t.tensor_type, tuple(int(x) for x in t.shape)) for t in reader.tensors}
    f32 = gguf.GGMLQuantizationType.F32
    assert types["blk.0.ssm_conv1d.weight"] == (f32, (4, 128))  # GGUF order: {kernel, channels}
    assert types["blk.0.ssm_a"][0] == types["blk.0.ssm_dt.bias"][0] == f32
    assert "blk.3.attn_q.weight" in types and "blk.3.attn_qkv.weight" not in types  # full attention at layer 3
    if "moe" in name:
        assert types["blk.0.ffn_gate_exps.weight"][1] == (64, 32, 8)
        assert types["blk.0.ffn_gate_inp.weight"][0] == f32 and types["blk.0.ffn_gate_inp_shexp.weight"] == (f32, (64,))


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_hugging_face(work):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from test_tokenizer_parity import first_difference, probe_for

    hf = AutoTokenizer.from_pretrained(fixtures_qwen35.qwen35())
    llm = Llama(model_path=str(converted(work, "qwen35")), vocab_only=True, verbose=False)
    text = probe_for(hf)
    want = hf.encode(text, add_special_tokens=False)
    got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    i = first_difference(want, got)
    assert want == got, f"token {i} differs: HF {want[i:i + 6]} vs llama.cpp {got[i:i + 6]}"
    assert llm.metadata["tokenizer.ggml.pre"] == "qwen35"  # Qwen3.5's own split, as in the released tokenizer
    for t in hf.all_special_tokens:
        assert llm.tokenize(t.encode(), add_bos=False, special=True) == [hf.convert_tokens_to_ids(t)], t


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen35_k", "qwen35_moe_k"])
def test_q4_k_m_loads_and_generates(name, work):
    """On the 256-wide variants, so the Q4_K_M really holds K-quant blocks for every kind of weight (on 64-wide rows
    llama.cpp falls back to Q5_0/Q8_0 throughout)."""
    import gguf

    from gguf_forge.runtime import load_model

    r = run("quant", str(converted(work, name, "f16")), "--type", "Q4_K_M", "-o", str(work / "q"), "--json")
    assert r.returncode == 0, r.stderr
    path = json.loads(r.stdout)[0]["output"]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    k_quants = ("Q4_K", "Q5_K", "Q6_K")
    assert types["blk.0.ssm_out.weight"] in k_quants and types["blk.0.attn_gate.weight"] in k_quants
    assert types["blk.3.attn_q.weight"] in k_quants and types["blk.0.ssm_conv1d.weight"] == "F32"
    if "moe" in name:
        assert types["blk.0.ffn_gate_exps.weight"] in k_quants and types["blk.0.ffn_down_shexp.weight"] in k_quants
    llm = load_model(path, n_ctx=256)
    out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1 and out["choices"][0]["text"]
    del llm
    # the 4-bit file computes the same function, roughly: random weights make tiny models chaotic, so this is a
    # sanity bound (measured correlation with the f32 file's logits 0.84 dense, 0.62 MoE; garbled blocks give ~0)
    tokens = tokens_for(fixtures_qwen35.ALL[name]())
    a, b = gguf_logits(converted(work, name), tokens), gguf_logits(path, tokens)
    corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    print(f"{name} Q4_K_M: logit correlation with f32 {corr:.2f}, argmax agreement {(a.argmax(-1) == b.argmax(-1)).mean():.0%}")
    assert corr > 0.4


def _fp32_model(model_dir: Path):
    """The float32 transformers model of a fixture (what peft adapters are made on and merged into)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


# -- LoRA on attention and linear-attention projections ------------------------------------------
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b",
                "out_proj"]


def qwen35_adapter() -> Path:
    """A peft LoRA (random, non-zero factors) on every attention and Gated DeltaNet projection of the dense fixture."""
    base = fixtures_qwen35.qwen35()

    def build(out: Path) -> None:
        adapters.random_peft_adapter(_fp32_model(base), out, seed=35, r=4, lora_alpha=8, target_modules=LORA_TARGETS,
                                     base_model_name_or_path="Tiny-Qwen3.5")

    return fixtures_qwen35._cached("lora-qwen35", build, base.name, fixtures_qwen35._SOURCE)


@pytest.mark.slow
def test_lora_merge_equals_peft_and_the_gguf_agrees(work, tmp_path):
    import torch
    from safetensors.numpy import load_file

    base, adapter = fixtures_qwen35.qwen35(), qwen35_adapter()
    reference = adapters.peft_merged(_fp32_model(base), adapter)
    ref_sd = adapters.state_float32(reference)

    merged = tmp_path / "merged"
    r = run("merge", "--base", str(base), "--lora", str(adapter), "-o", str(merged), "--dtype", "f32", "--no-progress")
    assert r.returncode == 0, r.stderr
    ours = {}
    for f in merged.glob("*.safetensors"):
        ours.update(load_file(f))
    touched = [k for k in ours if any(f".{t}." in k for t in LORA_TARGETS)]
    assert len(touched) == 6 * 5 + 2 * 4  # 6 linear-attention layers x 5 projections, 2 attention layers x 4
    worst = adapters.max_merge_diff(ref_sd, ours.__getitem__, ours)
    print(f"qwen35 LoRA: max |ours - peft| {worst:.2e} over {len(ours)} tensors")
    assert worst <= 1e-5

    out = tmp_path / "lora-F32.gguf"
    r = run("convert", str(base), "--lora", str(adapter), "-o", str(out), "--outtype", "f32", "--no-progress")
    assert r.returncode == 0, r.stderr
    tokens = tokens_for(base)
    with torch.no_grad():
        want = reference(torch.tensor([tokens])).logits[0].numpy()
    got = gguf_logits(out, tokens)
    same = got.argmax(-1) == want.argmax(-1)
    changed = (want.argmax(-1) != reference_logits("qwen35").argmax(-1)).mean()
    print(f"qwen35 LoRA GGUF: argmax agreement {same.mean():.1%}, max |logit diff| {np.abs(got - want).max():.2e}; "
          f"the adapter changes the next token at {changed:.0%} of positions")
    assert changed > 0.2  # the adapter really matters
    assert same.all()


def qwen35_moe_adapter() -> Path:
    """peft LoRA on the MoE fixture as transformers 5 trains it: ``target_parameters`` on the fused 3-D expert
    parameters plus attention and Gated DeltaNet projections (the checkpoint stores experts per expert)."""
    base = fixtures_qwen35.qwen35_moe()

    def build(out: Path) -> None:
        adapters.random_peft_adapter(_fp32_model(base), out, seed=7, r=4, lora_alpha=8,
                                     target_modules=["q_proj", "in_proj_qkv", "out_proj"],
                                     target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                                     base_model_name_or_path="Tiny-Qwen3.5-MoE")

    return fixtures_qwen35._cached("lora-qwen35-moe", build, base.name, fixtures_qwen35._SOURCE)


@pytest.mark.slow
def test_lora_on_experts_and_linear_attention_merges_like_peft(work, tmp_path):
    import torch

    from gguf_forge.convert import convert
    from gguf_forge.convert.checkpoint import Checkpoint
    from gguf_forge.convert.lora import LoraSpec, merged_source

    base, adapter = fixtures_qwen35.qwen35_moe(), qwen35_moe_adapter()
    reference = adapters.peft_merged(_fp32_model(base), adapter)
    ours = merged_source(Checkpoint(base), [LoraSpec(str(adapter))])
    worst = 0.0
    for k, v in reference.state_dict().items():
        v, p = v.float().numpy(), k.rsplit(".", 1)[0]
        if k.endswith("experts.gate_up_proj"):  # peft's fused parameter; the checkpoint's per-expert tensors
            got = np.stack([np.concatenate([ours.read_float32(f"{p}.{e}.gate_proj.weight"),
                                            ours.read_float32(f"{p}.{e}.up_proj.weight")]) for e in range(len(v))])
        elif k.endswith("experts.down_proj"):
            got = np.stack([ours.read_float32(f"{p}.{e}.down_proj.weight") for e in range(len(v))])
        else:
            got = ours.read_float32(k)
        worst = max(worst, float(np.abs(got.reshape(v.shape) - v).max()))
    assert worst <= 1e-5

    out = tmp_path / "moe-lora-F32.gguf"
    convert(base, out, outtype="f32", loras=[LoraSpec(str(adapter))], progress=False)
    tokens = tokens_for(base)
    with torch.no_grad():
        want = reference(torch.tensor([tokens])).logits[0].numpy()
    got = gguf_logits(out, tokens)
    changed = (want.argmax(-1) != reference_logits("qwen35_moe").argmax(-1)).mean()
    same = got.argmax(-1) == want.argmax(-1)
    print(f"qwen35_moe LoRA: max |ours - peft| {worst:.1e}; GGUF argmax agreement {same.mean():.1%}, max |logit diff| "
          f"{np.abs(got - want).max():.2e}; the adapter changes the next token at {changed:.0%} of positions")
    assert changed > 0.5 and same.all()


def text_only_adapter() -> Path:
    """A peft LoRA trained the way text fine-tunes of Qwen3.5 are: the multimodal checkpoint loaded with
    AutoModelForCausalLM (its text model alone, so the adapter names ``model.layers...``, not the checkpoint's
    ``model.language_model.layers...``)."""
    base = fixtures_qwen35.qwen35_vl()

    def build(out: Path) -> None:
        model = _fp32_model(base)
        assert type(model).__name__ == "Qwen3_5ForCausalLM"
        adapters.random_peft_adapter(model, out, seed=3, r=4, lora_alpha=8,
                                     target_modules=["q_proj", "in_proj_qkv", "out_proj"])

    return fixtures_qwen35._cached("lora-qwen35-text-only", build, base.name, fixtures_qwen35._SOURCE)


@pytest.mark.slow
def test_text_only_adapter_merges_into_the_multimodal_checkpoint(work, tmp_path):
    """The adapter's ``model.layers.N`` targets are the checkpoint's ``model.language_model.layers.N`` tensors: the
    merged GGUF equals the same adapter merged into the text model saved alone (whose names match the adapter's, the
    path checked against peft above)."""
    import gguf

    from gguf_forge.convert import convert
    from gguf_forge.convert.lora import LoraSpec

    adapter = text_only_adapter()
    out = tmp_path / "vl-lora.gguf"
    r = run("convert", str(fixtures_qwen35.qwen35_vl()), "--lora", str(adapter), "-o", str(out), "--outtype", "f32",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    alone_out = tmp_path / "alone-lora.gguf"
    convert(fixtures_qwen35.qwen35(), alone_out, outtype="f32", loras=[LoraSpec(str(adapter))], progress=False)
    vl = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    alone = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(alone_out).tensors}
    assert vl.keys() == alone.keys() and all(np.array_equal(vl[n], alone[n]) for n in vl)
    plain = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(converted(work, "qwen35")).tensors}
    changed = [n for n in vl if not np.array_equal(vl[n], plain[n])]
    assert len(changed) == 6 * 2 + 2  # in_proj_qkv + out_proj in 6 linear-attention layers, q_proj in 2 attention


# -- layouts and refusals --------------------------------------------------------------------------
@pytest.mark.slow
def test_fused_3d_experts_convert_like_per_expert(work, tmp_path):
    """transformers 5's in-memory layout (``experts.gate_up_proj`` [E, 2 x F, H], ``experts.down_proj`` [E, H, F]) on
    disk gives the very tensors the per-expert layout (what save_pretrained writes) gives."""
    import gguf
    import torch
    from safetensors.torch import load_file, save_file

    from gguf_forge.convert import convert

    src = fixtures_qwen35.qwen35_moe()
    fused = tmp_path / "fused"
    shutil.copytree(src, fused, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json", ".complete"))
    tensors = {}
    for f in src.glob("*.safetensors"):
        tensors.update(load_file(f))
    for b in range(8):
        p = f"model.layers.{b}.mlp.experts"
        gate_up = [torch.cat([tensors.pop(f"{p}.{e}.gate_proj.weight"), tensors.pop(f"{p}.{e}.up_proj.weight")])
                   for e in range(8)]
        tensors[f"{p}.gate_up_proj"] = torch.stack(gate_up)
        tensors[f"{p}.down_proj"] = torch.stack([tensors.pop(f"{p}.{e}.down_proj.weight") for e in range(8)])
    save_file(tensors, fused / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "fused-F32.gguf"
    convert(fused, out, outtype="f32", progress=False)
    ours = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    per = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(converted(work, "qwen35_moe")).tensors}
    assert ours.keys() == per.keys()
    for n in ours:
        assert np.array_equal(ours[n], per[n]), n


def _edited(tmp_path: Path, src: Path, **changes) -> Path:
    d = tmp_path / "edited"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns(".complete"))
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("changes,words", [
    ({"layer_types": ["full_attention"] * 8}, ["blk.0.", "full_attention layer 0", "layer_types"]),
    ({"layer_types": ["linear_attention"] * 7}, ["layer_types", "8"]),
    ({"layer_types": ["linear_attention"] * 7 + ["sliding_attention"]}, ["sliding_attention"]),
    ({"linear_value_head_dim": 32}, ["linear_value_head_dim", "llama.cpp"]),
    ({"linear_num_value_heads": 3}, ["linear_num_value_heads", "multiple"]),
])
def test_configs_llama_cpp_cannot_run_are_one_line_errors(tmp_path, changes, words):
    model = _edited(tmp_path, fixtures_qwen35.qwen35(), **changes)
    out = tmp_path / "x.gguf"
    assert_user_error(run("convert", str(model), "-o", str(out), "--no-progress"), *words)
    assert not out.exists()


def test_released_configuration_maps_hub_tensor_names():
    """Qwen3.5-35B-A3B's / Qwen3.6-35B-A3B's config.json (Qwen3_5MoeForConditionalGeneration, text under
    text_config, an MTP head and a vision tower in the checkpoint): hparams and names as llama.cpp wants them."""
    import gguf

    from gguf_forge.convert.arch import for_config

    n = 40
    text = dict(
        hidden_size=2048, num_hidden_layers=n, num_attention_heads=16, num_key_value_heads=2, head_dim=256,
        linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
        linear_num_value_heads=32, moe_intermediate_size=512, shared_expert_intermediate_size=512, num_experts=256,
        num_experts_per_tok=8, full_attention_interval=4, vocab_size=248320, max_position_embeddings=262144,
        rms_norm_eps=1e-6, mtp_num_hidden_layers=1, model_type="qwen3_5_moe_text", hidden_act="silu",
        layer_types=["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(n)],
        rope_parameters={"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                         "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    )
    arch = for_config({"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
                       "text_config": text, "vision_config": {"depth": 27}, "tie_word_embeddings": False})
    assert arch.arch_name == "qwen35moe" and arch.n_rot == 64 and arch.sections == [11, 11, 10, 0]
    p = "model.language_model.layers"
    assert arch.gguf_name(f"{p}.0.linear_attn.dt_bias") == "blk.0.ssm_dt.bias"
    assert arch.gguf_name(f"{p}.0.linear_attn.A_log") == "blk.0.ssm_a"
    assert arch.gguf_name(f"{p}.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    assert arch.gguf_name(f"{p}.1.mlp.shared_expert_gate.weight") == "blk.1.ffn_gate_inp_shexp.weight"
    assert arch.gguf_name("model.language_model.norm.weight") == "output_norm.weight"
    assert arch.gguf_name("lm_head.weight") == "output.weight"
    for left in ("model.visual.blocks.0.attn.qkv.weight", "mtp.fc.weight", "mtp.layers.0.mlp.gate.weight"):
        assert arch.gguf_name(left) is None
    assert len(arch.warnings) == 1 and "model.visual (1 tensors)" in arch.warnings[0] and "mtp (2" in arch.warnings[0]
    w = gguf.GGUFWriter(path=None, arch=arch.arch_name)
    arch.add_hparams(w)
    kv = {k: v.value for k, v in w.kv_data[0].items()}
    assert kv["qwen35moe.ssm.inner_size"] == 4096 and kv["qwen35moe.ssm.time_step_rank"] == 32
    assert kv["qwen35moe.ssm.group_count"] == 16 and kv["qwen35moe.full_attention_interval"] == 4
    assert kv["qwen35moe.expert_count"] == 256 and kv["qwen35moe.expert_used_count"] == 8
    # value heads: grouped by key head in HF, tiled in llama.cpp (2 value heads per key head here)
    v = np.arange(32 * 128 * 2).reshape(32 * 128, 2)
    tiled = arch.transform("blk.0.attn_gate.weight", v, "F32")
    assert np.array_equal(tiled[128:256], v[256:384])  # llama.cpp's 2nd head is key head 1's first value head
    cols = v[:, 0].reshape(1, -1)
    assert np.array_equal(arch.imatrix_columns("blk.0.ssm_out.weight", cols),
                          arch.transform("blk.0.ssm_out.weight", cols, "F32"))
