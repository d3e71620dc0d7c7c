"""The main job end to end: `quantize merge-convert` and the demo built on it (SmolLM2 + a trained identity LoRA)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import adapters
from helpers import QUANTIZE, assert_user_error, run

NAME = "SmolLM2-135M-Xiaoduan"


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def check_manifest(folder: Path) -> dict:
    """manifest.json lists every visible file with its true size and sha256, and nothing half-written is left."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {o["file"] for o in manifest["outputs"]}
    for o in manifest["outputs"]:
        p = folder / o["file"]
        assert p.stat().st_size == o["bytes"], o["file"]
        assert sha256(p) == o["sha256"], o["file"]
    visible = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert visible == listed | {"manifest.json"}, visible ^ (listed | {"manifest.json"})
    assert not list(folder.glob(".*.partial"))
    return manifest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`quantize demo`'s code path, run once for this module (identity LoRA, imatrix, Q4_K_M + Q8_0, smoke)."""
    from gguf_forge.tools.pipeline import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo-output"
    lines: list[str] = []
    adapters.identity_lora()  # trained once and cached (the demo reuses the cached adapter)
    t0 = time.perf_counter()
    result = run_demo(out, log=lines.append, progress=False)
    yield result, "\n".join(lines), time.perf_counter() - t0
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.mark.slow
def test_demo_chat_answers_with_the_fine_tuned_identity(demo_run):
    result, printed, _ = demo_run
    question, reply = result.transcript[0]
    assert question == adapters.IDENTITY_QUESTION
    assert reply.strip() == adapters.IDENTITY_ANSWER  # through the imatrix Q4_K_M file
    assert "Paris" in result.transcript[1][1]  # and the rest of what the model knew is still there
    assert result.smoke_passed
    assert f"ollama create {NAME.lower()} -f " in printed and "Modelfile" in printed


@pytest.mark.slow
def test_pipeline_folder_has_every_file_with_true_hashes_and_a_card(demo_run):
    from gguf_forge.tools.pipeline import card_front_matter

    result, _, _ = demo_run
    folder = result.outdir
    manifest = check_manifest(folder)
    files = {o["file"]: o for o in manifest["outputs"]}
    for f in [f"{NAME}-Q4_K_M.gguf", f"{NAME}-Q8_0.gguf", f"{NAME}-Q4_K_M-im.gguf", "imatrix.gguf", "Modelfile",
              "README.md"]:
        assert f in files, f
    assert any(o["kind"] == "lmstudio-preset" for o in manifest["outputs"])
    assert not (folder / f"{NAME}-BF16.gguf").exists()  # intermediate removed without --keep-intermediate
    # the imatrix variant really differs from the plain one
    assert files[f"{NAME}-Q4_K_M-im.gguf"]["sha256"] != files[f"{NAME}-Q4_K_M.gguf"]["sha256"]
    # computed by llama.cpp on the intermediate GGUF (memory-mapped), recorded as such
    assert manifest["options"]["imatrix_engine"] == "llama"
    assert manifest["imatrix"]["engine"] == "llama" and manifest["imatrix"]["gguf"] == f"{NAME}-BF16.gguf"
    # inputs are recorded with hashes, and the versions
    assert len(manifest["inputs"]["base"]["sha256"]) == 64 and len(manifest["inputs"]["loras"][0]["sha256"]) == 64
    assert manifest["tool"]["name"] == "gguf-forge" and manifest["tool"]["llama_cpp_python"]
    # smoke results inside are passing, per quant
    assert set(manifest["smoke"]) == {f"{NAME}-Q4_K_M.gguf", f"{NAME}-Q8_0.gguf", f"{NAME}-Q4_K_M-im.gguf"}
    assert all(r["passed"] for r in manifest["smoke"].values())
    # the Modelfile points at the default quant, relative to itself
    modelfile = (folder / "Modelfile").read_text()
    assert f"FROM ./{NAME}-Q4_K_M.gguf" in modelfile or f"FROM {NAME}-Q4_K_M.gguf" in modelfile
    fm = card_front_matter((folder / "README.md").read_text())
    for key in ["base_model", "tags", "quantized_by", "license", "language", "pipeline_tag"]:
        assert key in fm, key
    assert {"gguf", "llama.cpp", "ollama", "lm-studio"} <= set(fm["tags"])
    assert fm["license"] == "apache-2.0"
    card = (folder / "README.md").read_text()
    assert f"{NAME}-Q4_K_M-im.gguf" in card and "ollama create" in card and "llama-cpp-python" in card


@pytest.mark.slow
@pytest.mark.slow
def test_demo_folder_passes_the_end_of_turn_audit(demo_run):
    """Issue 13: the pipeline's audit (kept in the manifest and the card) and `quantize audit` on the folder find
    no mismatch; the greedy replies end with the template's <|im_end|>."""
    out = demo_run[0].outdir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["audit"]["ok"] and manifest["audit"]["turn_end"] == "<|im_end|>"
    assert "End-of-turn audit: every runtime stops" in (out / "README.md").read_text()
    r = run("audit", str(out), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    ends = next(s["value"] for s in data["signals"] if s["source"].startswith("greedy"))
    assert ends.count("<|im_end|>") >= 2, ends


def test_rerun_skips_every_step_and_changes_no_file(demo_run):
    """The same command again (here through the CLI with the demo's options) redoes nothing."""
    from gguf_forge.convert import default_model_dir
    from gguf_forge.tools.pipeline import identity_lora

    result, _, first_seconds = demo_run
    before = snapshot(result.outdir)
    t0 = time.perf_counter()
    r = run("merge-convert", "--base", str(default_model_dir()), "--lora", str(identity_lora()),
            "-o", str(result.outdir), "--quant", "Q4_K_M,Q8_0", "--imatrix", "default", "--imatrix-quant", "Q4_K_M",
            "--smoke", "--name", NAME, "--no-progress")
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert "0 steps run" in r.stdout, r.stdout
    assert snapshot(result.outdir) == before
    print(f"first run {first_seconds:.1f} s (with the chat), re-run {seconds:.1f} s")
    assert seconds < first_seconds / 3


@pytest.mark.slow
def test_killed_during_quantization_then_rerun_completes(tmp_path):
    """SIGKILL while llama.cpp writes a quant: no half file under a final name; the re-run finishes the job."""
    from pydoc_data.topics import topics

    base = str(adapters.fixtures.smollm2())
    lora = str(adapters.identity_lora())
    out = tmp_path / "out"
    text = tmp_path / "held-out.txt"
    text.write_text("\n".join(topics[k] for k in sorted(topics))[:60_000])
    args = ["merge-convert", "--base", base, "--lora", lora, "-o", str(out), "--quant", "Q8_0,Q4_K_M,Q5_K_M",
            "--eval", str(text), "--eval-chunks", "2", "--name", "killed", "--no-progress", "--threads", "2",
            "--template", "chatml"]
    proc = subprocess.Popen([*QUANTIZE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (out / "killed-Q8_0.gguf").exists() and list(out.glob(".killed-Q4_K_M.gguf.*.partial")):
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed during quantization"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "killed-Q4_K_M.gguf").exists()
    assert not (out / "manifest.json").exists()
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "merge + convert" not in r.stdout  # the finished intermediate is reused...
    assert "quantize Q8_0" not in r.stdout  # ...and so is the finished quant
    assert "quantize Q4_K_M" in r.stdout
    manifest = check_manifest(out)
    assert [o["file"] for o in manifest["outputs"] if o["kind"] == "gguf"] == [
        "killed-Q8_0.gguf", "killed-Q4_K_M.gguf", "killed-Q5_K_M.gguf"]
    ev = manifest["eval"]
    assert len(ev["candidates"]) == 3 and ev["candidates"][0]["mean_kld"] < ev["candidates"][1]["mean_kld"]
    assert "mean KLD" in (out / "README.md").read_text()
    # --template goes into the GGUFs too, so llama.cpp, LM Studio and llama-cpp-python use it as well
    from gguf_forge.chat_template import load as load_template
    from gguf_forge.convert import inspect_gguf

    for f in ["killed-Q8_0.gguf", "killed-Q5_K_M.gguf"]:
        assert inspect_gguf(out / f)["chat_template"] == load_template("chatml")


def test_bad_pipeline_input_is_a_one_line_error(tmp_path):
    base = tmp_path / "nothing-here"
    r = run("merge-convert", "--base", str(base), "-o", str(tmp_path / "o"), "--no-progress")
    assert_user_error(r, "--base", "nothing-here")
    r = run("merge-convert", "--base", str(tmp_path), "-o", str(tmp_path / "o"), "--quant", "Q4_K_X")
    assert_user_error(r, "Q4_K_X")
    r = run("merge-convert", "--base", str(tmp_path), "-o", str(tmp_path / "o"), "--quant", "IQ2_XS")
    assert_user_error(r, "IQ2_XS", "--imatrix")
    r = run("merge-convert", "--base", str(tmp_path), "-o", str(tmp_path / "o"), "--imatrix", str(tmp_path / "no.txt"))
    assert_user_error(r, "--imatrix", "no.txt")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_template_we_cannot_reproduce_stops_the_run_before_any_work(tmp_path):
    bad = tmp_path / "shouting.jinja"
    bad.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | upper }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    r = run("merge-convert", "--base", str(adapters.fixtures.smollm2()), "-o", str(tmp_path / "o"),
            "--template", str(bad), "--no-progress")
    assert_user_error(r, "chat template", "cannot reproduce")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_publish_accepts_the_pipeline_folder(demo_run):
    """`quantize publish` plans exactly the folder's listed files, the manifest and the card (no token needed)."""
    result, _, _ = demo_run
    before = snapshot(result.outdir)
    r = run("publish", str(result.outdir), "--repo", "someone/Xiaoduan-GGUF", "--dry-run", "--json", "--no-progress",
            env={"HF_TOKEN": ""})
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    manifest = json.loads((result.outdir / "manifest.json").read_text())
    planned = {f["path_in_repo"] for f in plan["files"]}
    assert planned == {o["file"] for o in manifest["outputs"]} | {"manifest.json"}
    assert plan["audit"] == "end-of-turn audit (recorded in manifest.json): no mismatch, turns end with <|im_end|>"
    assert snapshot(result.outdir) == before  # nothing was written
    assert not (result.outdir / ".publish-split").exists()


@pytest.mark.slow
def test_unfixable_audit_mismatch_stops_the_run_before_publishing(tmp_path):
    """A fine-tune whose replies end with <|im_end|> shipped with a template that closes turns with <|endoftext|>:
    the audit finds it, metadata cannot fix it; the run writes its card and manifest (with the audit), names the
    mismatch, exits non-zero, and a `merge-convert ... && publish` chain sends nothing to the (local) hub."""
    from hubserver import HubServer

    token = "hf_TestSecretToken0123456789abcdefXYZ"
    template = tmp_path / "wrong-end.jinja"
    template.write_text("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
                        "{% if message['role'] == 'assistant' %}{{ '<|endoftext|>\\n' }}{% else %}"
                        "{{ '<|im_end|>\\n' }}{% endif %}{% endfor %}"
                        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    out = tmp_path / "out"
    pipeline = [*QUANTIZE, "merge-convert", "--base", str(adapters.fixtures.smollm2()), "-o", str(out), "--quant",
                "Q8_0", "--template", str(template), "--smoke", "--name", "wrong-end", "--no-progress",
                "--threads", "2"]
    publish = [*QUANTIZE, "publish", str(out), "--repo", "forge-user/Wrong-End-GGUF", "--no-progress"]
    with HubServer(token) as hub:
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": token, "HF_ENDPOINT": hub.url}
        r = subprocess.run(["bash", "-c", " ".join(map(shlex.quote, pipeline)) + " && "
                            + " ".join(map(shlex.quote, publish))], capture_output=True, text=True, env=env)
        assert r.returncode == 2, r.stderr[-2000:]
        error = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and "end-of-turn audit" in error[0] and "<|im_end|>" in error[0], r.stderr[-2000:]
        assert "not ready to publish" in error[0] and "Traceback" not in r.stderr
        assert hub.log == [] and not hub.repos  # nothing reached the hub
        # the folder published by hand after the stopped run: publish reads the audit kept in manifest.json
        r = subprocess.run(publish, capture_output=True, text=True, env=env)
        error = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert r.returncode == 2 and len(error) == 1 and "manifest.json" in error[0], r.stderr[-2000:]
        assert "<|im_end|>" in error[0] and "--allow-audit-mismatch" in error[0]
        assert hub.log == [] and not hub.repos
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["audit"]["unfixable"] and "<|im_end|>" in manifest["audit"]["unfixable"][0]
    assert not manifest["audit"]["ok"]
    card = (out / "README.md").read_text()
    assert "<|im_end|>" in card and "<|endoftext|>" in card
