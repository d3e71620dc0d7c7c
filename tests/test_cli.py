"""The `quantize` command as a user meets it: metadata, overrides, hub ids, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures import fixture_dir
from helpers import QUANTIZE, assert_user_error, run


def copy_model(name: str, dest: Path) -> Path:
    shutil.copytree(fixture_dir(name), dest, ignore=shutil.ignore_patterns(".complete"))
    return dest


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and "0.1.0" in r.stdout
    for cmd in ("convert", "inspect", "demo"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "Example" in r.stdout


@pytest.mark.slow
def test_metadata_and_overrides(tmp_path):
    out = tmp_path / "Tiny-Qwen2.5-Chat-Q8_0.gguf"
    r = run("convert", str(fixture_dir("qwen2")), "-o", str(out), "--outtype", "q8_0", "--ctx", "65536",
            "--rope-theta", "2000000", "--override-kv", "general.author=str:gguf-forge tests", "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pre_tokenizer"] == "qwen2"
    info = json.loads(run("inspect", str(out), "--json").stdout)
    assert info["context_length"] == 65536
    assert info["rope"]["freq_base"] == 2000000.0
    assert info["license"] == "apache-2.0"
    assert info["file_type"] == "Q8_0"
    assert info["tokenizer"]["eot"]["text"] == "<|im_end|>"  # found by rendering the template in a fresh process
    from gguf_forge.runtime import load_model  # the overridden keys keep the types llama.cpp checks

    llm = load_model(out, n_ctx=64)
    assert llm.metadata["general.author"] == "gguf-forge tests"
    assert llm._model.n_ctx_train() == 65536


@pytest.mark.slow
def test_llama3_rope_freqs_and_metadata(converted):
    from gguf_forge.convert import inspect_gguf

    info = inspect_gguf(converted("llama3", "f32"))
    assert info["rope"]["rope_freqs_tensor"]
    assert info["architecture"] == "llama"
    import gguf

    r = gguf.GGUFReader(converted("llama3", "f32"))
    langs = [bytes(r.fields["general.languages"].parts[i]).decode() for i in r.fields["general.languages"].data]
    assert langs == ["en", "zh"]
    assert "general.base_model.0.name" in r.fields


@pytest.mark.slow
def test_auto_outtype_keeps_bf16(tmp_path):
    out = tmp_path / "q3.gguf"
    r = run("convert", str(fixture_dir("qwen3")), "-o", str(out), "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outtype"] == "bf16"


@pytest.mark.slow
def test_hub_id_from_offline_cache(tmp_path):
    """A repo id resolves through huggingface_hub's cache layout with the hub unreachable."""
    src = fixture_dir("qwen3")
    hub = tmp_path / "hub"
    repo = hub / "models--tiny-org--Tiny-Qwen3"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in src.iterdir():
        if f.name.startswith("."):
            continue
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    out = tmp_path / "out.gguf"
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    r = run("convert", "tiny-org/Tiny-Qwen3", "-o", str(out), "--no-progress", env=env)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    r = run("convert", "tiny-org/Not-There", "-o", str(tmp_path / "x.gguf"), env=env)
    assert r.returncode == 2 and "not in the Hugging Face cache" in r.stderr



@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path):
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()

    def no_output() -> None:
        assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())

    # missing config.json
    m = copy_model("qwen2", tmp_path / "no-config")
    (m / "config.json").unlink()
    assert_user_error(run("convert", str(m), "-o", str(out)), "config.json")
    no_output()

    # truncated safetensors
    m = copy_model("qwen2", tmp_path / "truncated")
    st = m / "model.safetensors"
    with open(st, "r+b") as f:
        f.truncate(st.stat().st_size - 1000)
    assert_user_error(run("convert", str(m), "-o", str(out)), "model.safetensors", "truncated")
    no_output()

    # a shard named in the index but absent
    m = copy_model("llama3", tmp_path / "missing-shard")
    (m / "model-00002-of-00002.safetensors").unlink()
    assert_user_error(run("convert", str(m), "-o", str(out)), "model-00002-of-00002.safetensors", "missing")
    no_output()

    # unsupported architecture: the error lists what is supported
    m = copy_model("qwen2", tmp_path / "unsupported")
    cfg = json.loads((m / "config.json").read_text())
    cfg["architectures"] = ["MambaForCausalLM"]
    (m / "config.json").write_text(json.dumps(cfg))
    assert_user_error(run("convert", str(m), "-o", str(out)), "MambaForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")
    no_output()

    # non-writable output folder
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions; use a folder that cannot be created instead
            target = tmp_path / "a-file" / "model.gguf"
            (tmp_path / "a-file").write_text("")
        else:
            target = ro / "model.gguf"
        assert_user_error(run("convert", str(fixture_dir("qwen2")), "-o", str(target)), str(target.parent))
        assert not target.exists()
    finally:
        ro.chmod(0o755)

    # a bad override
    assert_user_error(run("convert", str(fixture_dir("qwen2")), "-o", str(out), "--override-kv", "x=int:abc"), "--override-kv")
    no_output()

    # not a GGUF for inspect
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all")
    assert_user_error(run("inspect", str(bogus)), "bogus.gguf")


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_conversion_leaves_no_file(tmp_path, sig):
    """Ctrl-C or kill while the GGUF is being written: nothing under the final name, no partial file, a message."""
    import signal
    import time

    model = fixture_dir("gemma3")  # ~1 GB of f32 output: long enough to interrupt mid-write
    out = tmp_path / "model.gguf"
    p = subprocess.Popen([*QUANTIZE, "convert", str(model), "-o", str(out), "--outtype", "f32", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    partial = []
    while time.time() < deadline and p.poll() is None:
        partial = [f for f in tmp_path.glob(".model.gguf.*.partial") if f.stat().st_size > 50_000_000]
        if partial:
            break
        time.sleep(0.01)
    assert partial, "the conversion never wrote a partial file"
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
