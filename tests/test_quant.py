"""`quantize quant`, `imatrix`, `eval`: llama.cpp's quantizer, llama.cpp's imatrix formats, measured quality."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import fixtures
from helpers import assert_user_error, run


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # GBs of quants: freed when the module ends


@pytest.fixture(scope="module")
def smollm2_f16(work, converted):
    return converted("smollm2", "f16")


@pytest.fixture(scope="module")
def smollm2_imatrix(work):
    out = work / "smollm2-imatrix.gguf"
    r = run("imatrix", str(fixtures.smollm2()), "-o", str(out), "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["entries"] == 30 * 7 and stats["chunks"] >= 2
    return out


# -- the two llama.cpp file formats -----------------------------------------------------------
def test_reads_llama_cpp_gguf_and_legacy_imatrix_exactly(tmp_path):
    """Files laid out as llama.cpp writes them (built here by hand) read back to the same numbers."""
    import gguf

    from gguf_forge.quant import read_imatrix

    rng = np.random.default_rng(0)
    sums = {"blk.0.attn_q.weight": rng.random((1, 8)) * 100, "blk.0.ffn_down.weight": rng.random((1, 16)) * 100,
            "blk.1.ffn_gate_exps.weight": rng.random((3, 8)) * 100}  # an MoE entry: one row per expert
    counts = {"blk.0.attn_q.weight": np.array([1024.0]), "blk.0.ffn_down.weight": np.array([1024.0]),
              "blk.1.ffn_gate_exps.weight": np.array([300.0, 500.0, 224.0])}
    # GGUF layout: general.type, imatrix.* keys, <name>.in_sum2 [n_cols, n_mat], <name>.counts [1, n_mat], sorted
    w = gguf.GGUFWriter(tmp_path / "hand.gguf", arch="imatrix")
    w.kv_data[0].pop("general.architecture")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["hand-made.txt"])
    w.add_uint32("imatrix.chunk_count", 2)
    w.add_uint32("imatrix.chunk_size", 512)
    for name in sorted(sums):
        w.add_tensor(name + ".in_sum2", sums[name].astype(np.float32))
        w.add_tensor(name + ".counts", counts[name].astype(np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    im = read_imatrix(tmp_path / "hand.gguf")
    assert im.datasets == ["hand-made.txt"] and im.chunk_count == 2 and im.chunk_size == 512
    for name in sums:
        np.testing.assert_array_equal(im.sums[name], sums[name].astype(np.float32))
        np.testing.assert_array_equal(im.counts[name], counts[name])

    # legacy .dat: n_entries; (len, name, ncall, nval, float[nval] = mean * ncall)...; last_chunk, len, dataset
    means = {"blk.0.attn_q.weight": np.arange(1, 9, dtype=np.float32) / 4, "output.weight": np.ones(4, np.float32)}
    ncall = 6
    raw = struct.pack("<i", len(means))
    for name, m in means.items():
        raw += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, m.size)
        raw += (m * ncall).astype("<f4").tobytes()
    raw += struct.pack("<ii", 6, len(b"wiki.train.raw")) + b"wiki.train.raw"
    (tmp_path / "hand.dat").write_bytes(raw)
    im = read_imatrix(tmp_path / "hand.dat")
    assert im.datasets == ["wiki.train.raw"] and im.chunk_count == 6
    for name, m in means.items():
        np.testing.assert_allclose(im.means()[name], m, rtol=1e-6)


def test_our_imatrix_files_round_trip(tmp_path):
    from gguf_forge.quant import IMatrix, read_imatrix, write_gguf, write_legacy

    rng = np.random.default_rng(1)
    im = IMatrix(datasets=["calib.txt"], chunk_count=4, chunk_size=128)
    for i in range(3):
        im.sums[f"blk.{i}.attn_k.weight"] = rng.random((1, 32)) * 1000
        im.counts[f"blk.{i}.attn_k.weight"] = np.array([512.0])
    write_gguf(im, tmp_path / "i.gguf")
    back = read_imatrix(tmp_path / "i.gguf")
    assert back.datasets == im.datasets and back.chunk_count == 4 and back.chunk_size == 128
    for k in im.sums:
        np.testing.assert_allclose(back.sums[k], im.sums[k], rtol=1e-7)
        np.testing.assert_array_equal(back.counts[k], im.counts[k])
    write_legacy(im, tmp_path / "i.dat")
    legacy = read_imatrix(tmp_path / "i.dat", chunk_size=128)
    for k, m in im.means().items():
        np.testing.assert_allclose(legacy.means()[k], m, rtol=1e-6)


# -- quantizing --------------------------------------------------------------------------------
@pytest.mark.slow
def test_imatrix_changes_the_output_and_is_recorded(work, smollm2_f16, smollm2_imatrix):
    import gguf

    out = work / "q"
    r = run("quant", str(smollm2_f16), "--type", "q4_k_m", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    plain = Path(json.loads(r.stdout)[0]["output"])
    r = run("quant", str(smollm2_f16), "--type", "Q4_K_M", "--imatrix", str(smollm2_imatrix), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    with_im = Path(json.loads(r.stdout)[0]["output"])
    assert plain.name.endswith("-Q4_K_M.gguf") and with_im.name.endswith("-Q4_K_M-im.gguf")
    a = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(plain).tensors}
    b = gguf.GGUFReader(with_im)
    changed = [t.name for t in b.tensors if np.asarray(t.data).tobytes() != a[t.name]]
    assert len(changed) > 100, "the importance matrix did not change the quantized weights"
    keys = {k: b.fields[k] for k in b.fields if k.startswith("quantize.imatrix.")}
    assert set(keys) == {"quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                         "quantize.imatrix.chunks_count"}
    assert int(b.fields["quantize.imatrix.entries_count"].parts[-1][0]) == 210
    # the same command again keeps the file; --force redoes it
    before = with_im.stat().st_mtime_ns
    r = run("quant", str(smollm2_f16), "--type", "Q4_K_M", "--imatrix", str(smollm2_imatrix), "-o", str(out))
    assert r.returncode == 0 and "kept" in r.stdout and with_im.stat().st_mtime_ns == before
    r = run("quant", str(smollm2_f16), "--type", "Q4_K_M", "--imatrix", str(smollm2_imatrix), "-o", str(out), "--force")
    assert r.returncode == 0 and "wrote" in r.stdout and with_im.stat().st_mtime_ns != before


@pytest.mark.slow
def test_imatrix_lowers_kld_on_other_text(work, smollm2_f16, smollm2_imatrix):
    """Default (Chinese/English/code) calibration; evaluation on English prose it never saw."""
    from pydoc_data.topics import topics

    text = work / "eval.txt"
    text.write_text("\n".join(topics[k] for k in sorted(topics))[:60000], encoding="utf-8")
    out = work / "q"  # the Q4_K_M pair of the test above is kept there (same input, type and options)
    files = []
    for t in ("Q4_0", "Q4_K_M"):
        for im in ([], ["--imatrix", str(smollm2_imatrix)]):
            r = run("quant", str(smollm2_f16), "--type", t, "-o", str(out), *im, "--json")
            assert r.returncode == 0, r.stderr
            files.append(json.loads(r.stdout)[0]["output"])
    r = run("eval", str(smollm2_f16), *files, "--text", str(text), "--chunks", "4", "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = {Path(c["file"]).name: c for c in json.loads(r.stdout)["candidates"]}
    for t in ("Q4_0", "Q4_K_M"):
        plain = next(v for k, v in rows.items() if k.endswith(f"-{t}.gguf"))
        im = next(v for k, v in rows.items() if k.endswith(f"-{t}-im.gguf"))
        print(f"{t}: mean KLD {plain['mean_kld']:.4f} -> {im['mean_kld']:.4f} with imatrix "
              f"({im['mean_kld'] / plain['mean_kld'] - 1:+.0%}), same top {plain['same_top']:.1%} -> {im['same_top']:.1%}")
        assert im["mean_kld"] < plain["mean_kld"]
    md = run("eval", str(smollm2_f16), files[0], "--text", str(text), "--chunks", "1", "--markdown", "--no-progress")
    assert md.stdout.startswith("| file |")


@pytest.mark.slow
def test_every_llama_cpp_type_loads_and_chats_or_is_refused_clearly(tmp_path):
    from gguf_forge.convert import convert
    from gguf_forge.quant import FTYPES, NEEDS_IMATRIX
    from gguf_forge.runtime import load_model

    model = fixtures.qwen2_k()
    f16 = tmp_path / "TinyK-F16.gguf"
    convert(model, f16, outtype="f16", progress=False)
    imatrix = tmp_path / "imatrix.gguf"
    r = run("imatrix", str(model), "--ctx", "128", "-o", str(imatrix), "--no-progress")
    assert r.returncode == 0, r.stderr
    outcome = {}
    for t in FTYPES:
        if t in NEEDS_IMATRIX:  # refused without, made with an imatrix
            assert_user_error(run("quant", str(f16), "--type", t, "-o", str(tmp_path)), t, "importance matrix")
        extra = ["--imatrix", str(imatrix)] if t in NEEDS_IMATRIX else []
        r = run("quant", str(f16), "--type", t, "-o", str(tmp_path), "--json", *extra)
        if r.returncode != 0:
            assert_user_error(r, t, "llama.cpp refused")
            outcome[t] = "refused: " + r.stderr.strip()
            continue
        path = json.loads(r.stdout)[0]["output"]
        llm = load_model(path, n_ctx=64)
        out = llm.create_completion("Hello", max_tokens=4, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
        outcome[t] = "ok"
    print(json.dumps(outcome, indent=1))
    refused = [t for t, o in outcome.items() if o != "ok"]
    assert len(refused) <= 2, refused  # measured: only Q1_0 (llama.cpp has no fallback type for it)


@pytest.mark.slow
def test_bad_quant_and_imatrix_input(tmp_path, smollm2_f16, smollm2_imatrix):
    out = tmp_path / "out"
    out.mkdir()
    # unknown type name
    assert_user_error(run("quant", str(smollm2_f16), "--type", "Q4_K_M,Q9_X", "-o", str(out)), "Q9_X", "Q4_K_M")
    # a quantized input without --allow-requantize
    q8 = tmp_path / "m-Q8_0.gguf"
    assert run("quant", str(smollm2_f16), "--type", "Q8_0", "-o", str(tmp_path)).returncode == 0
    q8 = next(tmp_path.glob("*-Q8_0.gguf"))
    assert_user_error(run("quant", str(q8), "--type", "Q4_0", "-o", str(out)), "already quantized", "--allow-requantize")
    # an imatrix for another model: names that do not exist / sizes that do not match
    from gguf_forge.convert import convert
    from gguf_forge.quant import read_imatrix, write_gguf

    other = tmp_path / "other-F16.gguf"
    convert(fixtures.qwen2_k(), other, outtype="f16", progress=False)
    assert_user_error(run("quant", str(other), "--type", "Q4_K_M", "--imatrix", str(smollm2_imatrix), "-o", str(out)),
                      "another model")
    im = read_imatrix(smollm2_imatrix)
    name = sorted(im.sums)[0]
    im.sums[name] = im.sums[name][:, :100]
    write_gguf(im, tmp_path / "resized.gguf")
    assert_user_error(run("quant", str(smollm2_f16), "--type", "Q4_K_M", "--imatrix", str(tmp_path / "resized.gguf"),
                          "-o", str(out)), name, "columns")
    assert list(out.iterdir()) == []
    # calibration text shorter than two chunks
    short = tmp_path / "short.txt"
    short.write_text("只有一句话。Only one sentence.", encoding="utf-8")
    target = out / "imatrix.gguf"
    assert_user_error(run("imatrix", str(fixtures.smollm2()), "--calibration", str(short), "-o", str(target)),
                      "two chunks")
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_imatrix_from_chat_jsonl_with_lora(tmp_path):
    """JSONL chats (OpenAI and ShareGPT shapes) render through the chat template; LoRA merges on the fly."""
    import adapters

    chats = tmp_path / "chats.jsonl"
    lines = []
    for i in range(40):
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"第{i}个问题：你是谁？"},
                                              {"role": "assistant", "content": adapters.IDENTITY_ANSWER}]},
                                ensure_ascii=False))
        lines.append(json.dumps({"conversations": [{"from": "human", "value": f"Question {i}: what is 2+{i}?"},
                                                   {"from": "gpt", "value": f"It is {2 + i}."}]}))
    chats.write_text("\n".join(lines), encoding="utf-8")
    base = tmp_path / "base.gguf"
    tuned = tmp_path / "tuned.gguf"
    for out, extra in ((base, []), (tuned, ["--lora", str(adapters.identity_lora())])):
        r = run("imatrix", str(fixtures.smollm2()), "--calibration", str(chats), "--ctx", "256", "-o", str(out),
                "--json", "--no-progress", *extra)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["chunks"] >= 2
    from gguf_forge.quant import read_imatrix

    a, b = read_imatrix(base), read_imatrix(tuned)
    assert a.datasets == ["chats.jsonl"]
    name = "blk.10.ffn_down.weight"
    assert not np.allclose(a.sums[name], b.sums[name])  # the fine-tune's activations, not the base's
