"""`quantize imatrix --engine llama` (llama.cpp's evaluation callback on a memory-mapped GGUF) against the torch
engine: the same tensors, equal counts, the same sums within float tolerance; GGUF input; MoE (MUL_MAT_ID)."""

from __future__ import annotations

import json

import pytest

import fixtures_dense
import fixtures_moe
import fixtures_qwen35
from gguf_forge.errors import ForgeError
from gguf_forge.quant import compute_imatrix, read_imatrix

import adapters
import fixtures
from helpers import assert_user_error, run
from imatrix_check import check_moe, differences, engines_agree, moe_gguf, moe_twins

CTX, CHUNKS = 64, 4


@pytest.fixture(scope="module")
def qwen2_torch():
    im, stats = compute_imatrix(fixtures.qwen2(), ctx=CTX, chunks=CHUNKS, engine="torch", progress=False)
    assert stats["engine"] == "torch"
    return im


def test_llama_engine_equals_torch_on_a_dense_model(qwen2_torch, tmp_path):
    new, stats = compute_imatrix(fixtures.qwen2(), ctx=CTX, chunks=CHUNKS, progress=False, gguf_type="f32",
                                 work_dir=tmp_path)
    assert stats["engine"] == "llama" and stats["tokens"] == CTX * CHUNKS
    assert len(new.sums) == 2 * 7  # every block matmul: q k v o gate up down
    diffs = differences(new, qwen2_torch)
    assert max(diffs.values()) < 2e-3, diffs
    assert new.counts["blk.0.attn_q.weight"].tolist() == [CTX * CHUNKS]
    assert list(tmp_path.iterdir()) == []  # the temporary GGUF is gone


def test_llama_engine_equals_torch_with_lora(tmp_path):
    diffs = engines_agree(fixtures.smollm2(), loras=_specs(adapters.adapter("plain")), ctx=CTX, chunks=2,
                          work_dir=tmp_path)
    assert len(diffs) == 30 * 7


def test_cli_on_a_gguf_and_on_a_folder_default_f16(qwen2_torch, tmp_path, converted):
    gguf = converted("qwen2", "f32")
    out = tmp_path / "from-gguf.gguf"
    r = run("imatrix", str(gguf), "--ctx", str(CTX), "--chunks", str(CHUNKS), "-o", str(out), "--json",
            "--no-progress", "--threads", "2")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["engine"] == "llama" and stats["gguf"] == str(gguf)
    # llama.cpp's tokenizer and chat-free text give the tokens transformers gives: the same statistic
    assert max(differences(read_imatrix(out), qwen2_torch).values()) < 2e-3
    # a folder: converted to a temporary F16 GGUF beside the output (removed), F16 weights -> close, not equal
    out16 = tmp_path / "sub" / "from-folder.gguf"
    out16.parent.mkdir()
    r = run("imatrix", str(fixtures.qwen2()), "--ctx", str(CTX), "--chunks", str(CHUNKS), "-o", str(out16),
            "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "llama engine" in r.stdout
    assert max(differences(read_imatrix(out16), qwen2_torch).values()) < 5e-2
    assert [p.name for p in out16.parent.iterdir()] == ["from-folder.gguf"]


def test_engine_refusals(tmp_path, converted):
    gguf = converted("qwen2", "f32")
    r = run("imatrix", str(gguf), "--engine", "torch", "-o", str(tmp_path / "a.gguf"))
    assert_user_error(r, "--engine torch", "GGUF")
    r = run("imatrix", str(gguf), "--lora", str(adapters.adapter("plain")), "-o", str(tmp_path / "a.gguf"))
    assert_user_error(r, "--lora", "GGUF")
    assert list(tmp_path.iterdir()) == []


def test_changed_tensors_are_the_tensors_the_adapters_change():
    """MergedCheckpoint.changed_tensors() (what the torch engine copies into the loaded model) names exactly the
    tensors that read differently from the base: LoRA modules on two layers, and modules_to_save replacing the
    norms and the tied lm_head (listed by its own name)."""
    import numpy as np

    from gguf_forge.convert import Checkpoint, merged_source

    base = Checkpoint(fixtures.smollm2())
    merged = merged_source(base, _specs(adapters.adapter("layers"), adapters.adapter("modules_to_save")))
    changed = merged.changed_tensors()
    differ = {n for n in merged.names()
              if n not in base.tensors or not np.array_equal(merged.read_float32(n), base.read_float32(n))}
    assert changed == differ
    assert {"lm_head.weight", "model.norm.weight", "model.layers.1.mlp.gate_proj.weight",
            "model.layers.0.self_attn.q_proj.weight"} <= changed
    assert "model.layers.0.mlp.gate_proj.weight" not in changed


def _specs(*paths):
    from gguf_forge.convert import parse_lora_spec

    return [parse_lora_spec(str(p)) for p in paths]


def test_moe_experts_through_mul_mat_id(tmp_path, converted):
    """A Qwen3-MoE GGUF: llama.cpp runs the experts as MUL_MAT_ID; per-expert sums and counts as llama-imatrix
    keeps them (checked through their invariants), written in llama.cpp's GGUF imatrix format and read back."""
    moe = moe_gguf(converted("qwen3", "f32"), tmp_path / "moe.gguf")
    out = tmp_path / "moe-imatrix.gguf"
    r = run("imatrix", str(moe), "--ctx", str(CTX), "--chunks", str(CHUNKS), "-o", str(out), "--json",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    im = read_imatrix(out)
    assert check_moe(im, n_expert=8, n_used=2, n_tokens=CTX * CHUNKS) == ["blk.0", "blk.1"]
    assert im.sums["blk.1.ffn_down_exps.weight"].shape == (8, 32)
    # the dense matmuls are untouched by the experts
    assert im.counts["blk.0.attn_q.weight"].tolist() == [CTX * CHUNKS]


def test_moe_torch_experts_equal_llama_mul_mat_id(tmp_path, converted):
    """The torch engine's per-expert statistic (hooks on transformers' fused experts and the router) equals what
    llama.cpp's MUL_MAT_ID gives on the same Qwen3-MoE weights: same tensors, counts, sums (but for a token or two
    whose top experts tie within rounding)."""
    import json

    from gguf_forge.convert import arch_for_config
    from gguf_forge.quant.imatrix import _calibration_chunks, collect_torch
    from gguf_forge.quant.imatrix_llama import run_llama

    moe, gguf = moe_twins(fixtures.qwen3(), converted("qwen3", "f32"), tmp_path / "moe.gguf")
    work, dataset = _calibration_chunks(fixtures.qwen3(), [], "default", CTX, CHUNKS)
    arch = arch_for_config(json.loads((fixtures.qwen3() / "config.json").read_text()))  # attention names
    ref = collect_torch(moe, arch, work, dataset)
    new, _ = run_llama(gguf, lambda llm: (work, dataset), CTX, progress=False)
    diffs = differences(new, ref, max_flips=4)  # near-tie routing choices may differ (see differences)
    assert max(diffs.values()) < 5e-3, diffs  # float16 K/V in llama.cpp; the down experts' inputs amplify it
    assert check_moe(new, 8, 2, CTX * CHUNKS) == ["blk.0", "blk.1"]
    assert check_moe(ref, 8, 2, CTX * CHUNKS) == ["blk.0", "blk.1"]


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_graphs_stopped_at_the_final_norm_give_the_same_statistic(name, tmp_path, converted):
    """After the first chunk's whole graph showed that nothing but the output head follows the final norm, the
    llama engine stops every graph there (the head's matmul over the vocabulary is never computed): the block
    weights' sums and counts are those of whole graphs (``process_output`` keeps every graph whole), last layer
    included; a MoE model too."""
    from gguf_forge.quant.imatrix import _calibration_chunks
    from gguf_forge.quant.imatrix_llama import run_llama

    gguf = converted(name, "f32")
    if name == "qwen3":
        gguf = moe_gguf(gguf, tmp_path / "moe.gguf")
    work, dataset = _calibration_chunks(getattr(fixtures, name)(), [], "default", CTX, CHUNKS)
    fast, stats = run_llama(gguf, lambda llm: (work, dataset), CTX, progress=False)
    whole, whole_stats = run_llama(gguf, lambda llm: (work, dataset), CTX, progress=False, process_output=True)
    assert stats["head_skipped"] == CHUNKS - 1 and whole_stats["head_skipped"] == 0
    assert sorted(fast.sums) == sorted(k for k in whole.sums if k.startswith("blk.")) and len(fast.sums) >= 14
    last = max(int(k.split(".")[1]) for k in fast.sums)
    assert any(k.startswith(f"blk.{last}.ffn_down") for k in fast.sums)
    for k in fast.sums:
        assert fast.counts[k].tolist() == whole.counts[k].tolist(), k
        assert abs(fast.sums[k] - whole.sums[k]).max() <= 1e-6 * abs(whole.sums[k]).max(), k


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_while_llama_cpp_decodes_leaves_no_file(tmp_path, converted, sig):
    """Ctrl-C (or kill) while llama.cpp runs the calibration: stops at the next matmul, exit 130, no file."""
    import signal
    import subprocess
    import threading
    import time

    from helpers import QUANTIZE

    out = tmp_path / "im.gguf"
    p = subprocess.Popen([*QUANTIZE, "imatrix", str(converted("smollm2", "f16")), "-o", str(out), "--chunks", "4",
                          "--threads", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: p.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and "imatrix:" not in "".join(err):
        time.sleep(0.05)
    assert p.poll() is None, "".join(err)
    time.sleep(1.0)  # inside llama_decode
    t = time.time()
    p.send_signal(getattr(signal, sig))
    p.wait(timeout=120)
    reader.join(timeout=5)
    text = "".join(err)
    assert p.returncode == 130, text
    assert "interrupted" in text and "Traceback" not in text and "Exception ignored" not in text
    assert time.time() - t < 60
    assert list(tmp_path.iterdir()) == []


# -- the issue-11 MoE families: both engines on the real fixtures, with and without an expert LoRA ------------
MOE_CASES = {  # (model, adapter)
    "qwen3_moe": (fixtures_moe.qwen3_moe, None),
    "qwen3_moe+lora-params": (fixtures_moe.qwen3_moe, lambda: fixtures_moe.moe_lora("qwen3_moe", "params")),
    "qwen3_moe+lora-experts": (fixtures_moe.qwen3_moe, lambda: fixtures_moe.moe_lora("qwen3_moe", "experts")),
    "qwen35_moe": (fixtures_qwen35.qwen35_moe, None),
    "gemma4_moe": (fixtures_dense.gemma4_moe, None),
    "gpt_oss": (fixtures_moe.gpt_oss, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MOE_CASES))
def test_engines_agree_on_the_moe_families(case, tmp_path):
    """The llama engine (MUL_MAT_ID on the converted fixture, adapters merged) equals the torch engine (hooks on
    transformers' experts): the same tensors as llama.cpp names them, per-expert counts, sums within tolerance."""
    model, lora = MOE_CASES[case]
    loras = _specs(lora()) if lora else None
    # llama.cpp keeps K/V in float16; through the random adapters' larger activations that moves a few near-tie
    # routing choices and the deeper down experts' sums by up to ~4e-2 (measured: with float32 K/V the two
    # engines agree to 2e-6 and 0 flips with either adapter; an adapter the torch engine ignored gave 0.24, 21 flips)
    tolerance, flips = (1e-1, 8) if lora else (5e-3, 4)
    try:
        diffs = engines_agree(model(), loras=loras, ctx=CTX, chunks=CHUNKS, work_dir=tmp_path, tolerance=tolerance,
                              max_flips=flips)
    except ForgeError as e:
        if "--engine torch" in str(e) and "layout this engine does not read" in str(e):
            pytest.skip(f"torch engine limitation, nothing to compare the llama engine with: {e}")
        raise
    experts = [n for n in diffs if "_exps." in n]
    assert experts and any(n.endswith(".ffn_gate_inp.weight") for n in diffs), sorted(diffs)
    print(f"{case}: {len(diffs)} tensors ({len(experts)} expert tensors), worst relative sum difference "
          f"{max(diffs.values()):.1e}")
