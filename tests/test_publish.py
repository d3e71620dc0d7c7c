"""`quantize publish`: the real huggingface_hub client against a local hub (tests/hubserver.py); gguf-split shards
that llama.cpp loads from the first one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers import QUANTIZE, assert_user_error, run
from hubserver import HubServer

TOKEN = "hf_TestSecretToken0123456789abcdefXYZ"
REPO = "forge-user/Tiny-GGUF"


def _tiny_gguf(path: Path, n_tensors: int, floats: int, seed: int) -> None:
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(path.stem)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "你好", "a"])
    for i in range(n_tensors):
        w.add_tensor(f"blk.{i}.ffn_up.weight", rng.standard_normal((floats // 64, 64)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _entry(folder: Path, name: str, kind: str, **extra) -> dict:
    data = (folder / name).read_bytes()
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "kind": kind, **extra}


def make_outdir(folder: Path) -> Path:
    """A folder shaped like `quantize merge-convert` output: two GGUFs (the second ~3 MB), Modelfile, preset,
    model card, manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    _tiny_gguf(folder / "Tiny-Q8_0.gguf", 2, 32_768, seed=1)
    _tiny_gguf(folder / "Tiny-Q4_K_M.gguf", 6, 131_072, seed=2)
    (folder / "Modelfile").write_text('FROM ./Tiny-Q4_K_M.gguf\nTEMPLATE """{{ .Prompt }}"""\n')
    (folder / "Tiny.preset.json").write_text(json.dumps({"name": "Tiny", "load": {}, "operation": {}}))
    (folder / "README.md").write_text("---\nbase_model: forge/Tiny\ntags: [gguf, llama.cpp]\n---\n# Tiny GGUF\n")
    manifest = {"tool": {"name": "gguf-forge", "version": "0.1.0", "llama_cpp_python": "0.3.36"},
                "name": "Tiny", "inputs": {},
                "outputs": [_entry(folder, "Tiny-Q4_K_M.gguf", "gguf", type="Q4_K_M"),
                            _entry(folder, "Tiny-Q8_0.gguf", "gguf", type="Q8_0"),
                            _entry(folder, "Modelfile", "modelfile"),
                            _entry(folder, "Tiny.preset.json", "lmstudio-preset"),
                            _entry(folder, "README.md", "model-card")]}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def hub_env(tmp_path: Path, server: HubServer | None = None, token: str | None = TOKEN) -> dict:
    env = {"HF_HOME": str(tmp_path / "hf-home"),  # no login cache from the machine
           "HF_HUB_DISABLE_XET": "1",  # hf_xet is installed with huggingface_hub; the mock hub speaks LFS
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": token or "",
           "HF_ENDPOINT": server.url if server else "http://127.0.0.1:9"}
    return env


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def assert_no_token(*outputs: str) -> None:
    for out in outputs:
        assert TOKEN not in out
        assert TOKEN[3:20] not in out


# -- bad input ------------------------------------------------------------------------------------------------

def test_bad_input_is_one_line_error(tmp_path):
    outdir = make_outdir(tmp_path / "out")
    env = hub_env(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run("publish", str(empty), "--repo", REPO, env=env), "not a pipeline output")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"tool": {"name": "something-else"}, "outputs": []}))
    assert_user_error(run("publish", str(other), "--repo", REPO, env=env), "not a pipeline output")
    for bad in ("Tiny-GGUF", "a/b/c", "me/bad name", "-x/y", "me/x--y"):
        assert_user_error(run("publish", str(outdir), "--repo", bad, env=env), "--repo", "OWNER/NAME")
    r = run("publish", str(outdir), "--repo", REPO, "--no-progress", env=hub_env(tmp_path, token=None))
    assert_user_error(r, "token", "HF_TOKEN")
    with open(outdir / "Modelfile", "a") as f:
        f.write("PARAMETER temperature 0.1\n")
    assert_user_error(run("publish", str(outdir), "--repo", REPO, "--dry-run", "--no-progress", env=env), "Modelfile", "sha256")
    (outdir / "Modelfile").unlink()
    assert_user_error(run("publish", str(outdir), "--repo", REPO, "--dry-run", "--no-progress", env=env), "Modelfile", "missing")


def test_dry_run_plans_splits_needs_no_token_and_touches_nothing(tmp_path):
    outdir = make_outdir(tmp_path / "out")
    before = snapshot(outdir)
    r = run("publish", str(outdir), "--repo", REPO, "--dry-run", "--json", "--max-file-size", "1.5M",
            env=hub_env(tmp_path, token=None))  # no token, and the endpoint is a closed port
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    targets = {f["path_in_repo"]: f for f in plan["files"]}
    shards = [p for p in targets if p.startswith("Tiny-Q4_K_M-")]
    assert shards == [f"Tiny-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert all(targets[s]["bytes"] <= 1_500_000 and targets[s]["split_from"] == "Tiny-Q4_K_M.gguf" for s in shards)
    assert sum(targets[s]["bytes"] for s in shards) > (outdir / "Tiny-Q4_K_M.gguf").stat().st_size
    assert {"Tiny-Q8_0.gguf", "Modelfile", "Tiny.preset.json", "README.md", "manifest.json"} <= set(targets)
    assert "Tiny-Q4_K_M.gguf" not in targets
    assert targets["Tiny-Q8_0.gguf"]["bytes"] == (outdir / "Tiny-Q8_0.gguf").stat().st_size
    assert snapshot(outdir) == before
    text = run("publish", str(outdir), "--repo", REPO, "--dry-run", "--no-progress", env=hub_env(tmp_path))
    assert text.returncode == 0 and "would upload to Hugging Face forge-user/Tiny-GGUF" in text.stdout
    assert "Tiny-Q4_K_M.gguf" in text.stdout and "6 files" in text.stdout


# -- uploads against the local hub -----------------------------------------------------------------------------

@pytest.mark.slow
def test_upload_is_byte_identical_and_resumes_after_a_dropped_connection(tmp_path):
    from gguf_forge.tools.publish import split_gguf

    outdir = make_outdir(tmp_path / "out")
    expected_shards = split_gguf(outdir / "Tiny-Q4_K_M.gguf", tmp_path / "expected", 1_500_000, progress=False)
    shard_oid = [hashlib.sha256(p.read_bytes()).hexdigest() for p in expected_shards]
    q8_oid = hashlib.sha256((outdir / "Tiny-Q8_0.gguf").read_bytes()).hexdigest()
    args = ["publish", str(outdir), "--repo", REPO, "--private", "--max-file-size", "1.5M"]
    with HubServer(TOKEN) as hub:
        env = {**os.environ, **hub_env(tmp_path, hub)}
        # 1. the connection dies in the middle of the second shard's PUT; the user gives up (SIGTERM)
        hub.drop_put.add(shard_oid[1])
        p = subprocess.Popen([*QUANTIZE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert hub.dropped.wait(120), "the upload never reached the second shard"
        p.send_signal(signal.SIGTERM)
        out1, err1 = p.communicate(timeout=60)
        assert p.returncode == 130, err1
        assert "re-run the same command to resume" in err1 and "Traceback" not in err1
        assert hub.repos[REPO]["private"] and hub.repos[REPO]["commits"] == []
        assert hub.calls("PUT", shard_oid[0]) and not hub.calls("PUT", shard_oid[2])

        # 2. re-run: finishes, without sending again what already arrived
        hub.drop_put.clear()
        r2 = run(*args, "--json", env=hub_env(tmp_path, hub))
        assert r2.returncode == 0, r2.stderr
        stored = hub.files(REPO)
        for entry in json.loads((outdir / "manifest.json").read_text())["outputs"]:
            if entry["file"] != "Tiny-Q4_K_M.gguf":
                assert stored[entry["file"]] == (outdir / entry["file"]).read_bytes(), entry["file"]
        assert stored["manifest.json"] == (outdir / "manifest.json").read_bytes()
        for p_ in expected_shards:
            assert stored[p_.name] == p_.read_bytes(), p_.name
        assert "Tiny-Q4_K_M.gguf" not in stored
        assert len(hub.calls("PUT", shard_oid[0])) == 1 and len(hub.calls("PUT", q8_oid)) == 1
        assert len(hub.repos[REPO]["commits"]) == 1
        assert not (outdir / ".publish-split").exists()  # shards removed once uploaded
        plan = json.loads(r2.stdout)
        assert plan["commit"] == hub.repos[REPO]["commits"][0]["oid"]
        assert {f["status"] for f in plan["files"]} == {"uploaded"}

        # 3. once more: everything is on the hub, nothing is sent, no empty commit
        puts = len(hub.calls("PUT", "."))
        r3 = run(*args, "--no-progress", env=hub_env(tmp_path, hub))
        assert r3.returncode == 0, r3.stderr
        assert "0 uploaded, 8 already on the hub" in r3.stdout
        assert len(hub.calls("PUT", ".")) == puts and len(hub.repos[REPO]["commits"]) == 1
    assert_no_token(out1, err1, r2.stdout, r2.stderr, r3.stdout, r3.stderr)
    for f in outdir.rglob("*"):
        assert not f.is_file() or TOKEN.encode() not in f.read_bytes()


def test_token_never_printed_even_when_the_server_echoes_it(tmp_path):
    outdir = make_outdir(tmp_path / "out")
    with HubServer(TOKEN) as hub:
        hub.fail["commit"] = 500  # the error body repeats the Authorization header
        r = run("publish", str(outdir), "--repo", REPO, "--no-progress", env=hub_env(tmp_path, hub))
        assert_user_error(r, "committing to", REPO, "re-run")
        assert "Bearer ***" in r.stderr  # the server's message is shown, with the credential scrubbed
        hub.fail = {"create": 401}
        r2 = run("publish", str(outdir), "--repo", REPO, "--no-progress", env=hub_env(tmp_path, hub))
        assert_user_error(r2, "refused the token")
        wrong = run("publish", str(outdir), "--repo", "other-user/x", "--no-progress",
                    env=hub_env(tmp_path, hub, token="hf_wrong"))
        hub.fail = {}
        assert wrong.returncode == 2
    assert_no_token(r.stdout, r.stderr, r2.stdout, r2.stderr)


# -- gguf-split shards -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_split_model_loads_from_first_shard_with_identical_logits(converted, tmp_path):
    import gguf

    from gguf_forge.runtime import load_model  # safe on AMX CPUs
    from gguf_forge.tools.publish import plan_split, split_gguf

    source = converted("smollm2", "f16")
    limit = source.stat().st_size // 3 + 1_000_000
    planned = plan_split(source, limit)
    shards = split_gguf(source, tmp_path / "split", limit, progress=False)
    try:
        assert [p.name for p in shards] == [f"{source.stem}-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
        assert [p.stat().st_size for p in shards] == [s.bytes for s in planned]
        assert all(p.stat().st_size <= limit for p in shards)
        src = gguf.GGUFReader(source)
        readers = [gguf.GGUFReader(p) for p in shards]
        for i, rd in enumerate(readers):
            assert int(rd.fields["split.no"].parts[-1][0]) == i
            assert int(rd.fields["split.count"].parts[-1][0]) == 3
            assert int(rd.fields["split.tensors.count"].parts[-1][0]) == len(src.tensors)
        assert set(src.fields) - {"split.no", "split.count", "split.tensors.count"} <= set(readers[0].fields)
        split_tensors = {t.name: t for rd in readers for t in rd.tensors}
        assert [t.name for rd in readers for t in rd.tensors] == [t.name for t in src.tensors]
        for t in src.tensors[:5] + src.tensors[-5:]:
            assert np.array_equal(split_tensors[t.name].data, t.data)

        def logits_and_greedy(path: Path) -> tuple[np.ndarray, list[int]]:
            llm = load_model(path, n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True, threads=2, seed=0)
            prompt = llm.tokenize(b"The capital of France is")
            llm.eval(prompt)
            logits = np.array(llm.scores[: len(prompt)], dtype=np.float32)
            generated = []
            for _ in range(8):
                generated.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([generated[-1]])
            llm.close()
            return logits, generated

        want_logits, want_tokens = logits_and_greedy(source)
        got_logits, got_tokens = logits_and_greedy(shards[0])
        assert np.array_equal(got_logits, want_logits)
        assert got_tokens == want_tokens
    finally:
        for p in shards:
            p.unlink(missing_ok=True)


def test_modelscope_client_is_pointed_at_the_endpoint_and_errors_stay_one_line(tmp_path):
    """Only what can be checked without ModelScope's upload protocol: the SDK talks to MODELSCOPE_ENDPOINT (here
    the local server, which does not implement ModelScope's API), and its errors come out as one line without
    the token. The upload itself is not verified (see README)."""
    pytest.importorskip("modelscope_hub")
    outdir = make_outdir(tmp_path / "out")
    with HubServer(TOKEN) as hub:
        env = {"MODELSCOPE_ENDPOINT": hub.url, "MODELSCOPE_API_TOKEN": TOKEN, "HOME": str(tmp_path)}
        r = run("publish", str(outdir), "--repo", REPO, "--hub", "modelscope", "--no-progress", env=env)
        assert_user_error(r, "creating repo", REPO)
        assert hub.calls("POST", r"^/api/v1/models$")
        r2 = run("publish", str(outdir), "--repo", REPO, "--hub", "modelscope", "--no-progress",
                 env={**env, "MODELSCOPE_API_TOKEN": ""})
        assert_user_error(r2, "no ModelScope token", "MODELSCOPE_API_TOKEN")
    assert_no_token(r.stdout, r.stderr, r2.stdout, r2.stderr)


# -- ModelScope: the real modelscope-hub client against a local ModelScope (tests/msserver.py) --------------------

def ms_env(tmp_path: Path, server, token: str | None = TOKEN, **client: str) -> dict:
    """Point the ModelScope client at ``server``; HOME in tmp_path so no login cache from the machine is used."""
    return {"MODELSCOPE_ENDPOINT": server.url, "MODELSCOPE_API_TOKEN": token or "", "HOME": str(tmp_path),
            "MODELSCOPE_CACHE": str(tmp_path / "ms-cache"), **client}


# the client's own retries cut to one extra attempt (its minimum), so that a connection that keeps dropping fails
# the run quickly and the re-run is what completes it
MS_FEW_RETRIES = {"MODELSCOPE_UPLOAD_BLOB_MAX_ATTEMPTS": "1", "MODELSCOPE_UPLOAD_RECOVERY_ENABLED": "0",
                  "MODELSCOPE_UPLOAD_FAILED_FILE_MAX_RETRY_ROUNDS": "1"}


def test_modelscope_upload_is_byte_identical_and_resumes_after_a_dropped_connection(tmp_path):
    pytest.importorskip("modelscope_hub")
    from gguf_forge.tools.publish import split_gguf

    from msserver import MsServer

    outdir = make_outdir(tmp_path / "out")
    expected_shards = split_gguf(outdir / "Tiny-Q4_K_M.gguf", tmp_path / "expected", 1_500_000, progress=False)
    shard_oid = [hashlib.sha256(p.read_bytes()).hexdigest() for p in expected_shards]
    q8_oid = hashlib.sha256((outdir / "Tiny-Q8_0.gguf").read_bytes()).hexdigest()
    args = ["publish", str(outdir), "--repo", REPO, "--hub", "modelscope", "--private", "--max-file-size", "1.5M",
            "--no-progress"]
    with MsServer(TOKEN) as ms:
        env = ms_env(tmp_path, ms, **MS_FEW_RETRIES)
        # 1. the connection dies half-way through every attempt at the second shard's blob: the run fails
        ms.drop_put[shard_oid[1]] = 1000
        r1 = run(*args, env=env)
        assert ms.dropped.is_set()
        dropped_puts = len(ms.calls("PUT", shard_oid[1]))
        assert_user_error(r1, "uploading to", REPO, "re-run the same command")
        assert ms.repos[REPO]["visibility"] == 1  # ModelScope's "private"
        assert "Tiny-Q4_K_M-00002-of-00003.gguf" not in ms.files(REPO) and "manifest.json" not in ms.files(REPO)

        # 2. the network is back; re-run: completes, prints clean JSON, sends again only what did not arrive
        ms.drop_put.clear()
        r2 = run(*args, "--json", env=env)
        assert r2.returncode == 0, r2.stderr
        plan = json.loads(r2.stdout)  # nothing of the client's own report mixed into stdout
        assert {f["status"] for f in plan["files"]} == {"uploaded"}
        stored = ms.files(REPO)
        expected = {e["file"]: (outdir / e["file"]).read_bytes()
                    for e in json.loads((outdir / "manifest.json").read_text())["outputs"]
                    if e["file"] != "Tiny-Q4_K_M.gguf"}
        expected["manifest.json"] = (outdir / "manifest.json").read_bytes()
        expected.update({p.name: p.read_bytes() for p in expected_shards})
        assert stored == expected  # byte-identical, the split GGUF only as its shards
        assert len(ms.calls("PUT", shard_oid[1])) == dropped_puts + 1
        assert len(ms.calls("PUT", shard_oid[0])) == 1 and len(ms.calls("PUT", q8_oid)) == 1
        assert not (outdir / ".publish-split").exists()

        # 3. once more: no data is sent again, the repo is unchanged
        puts = len(ms.calls("PUT", "."))
        r3 = run(*args, env=env)
        assert r3.returncode == 0, r3.stderr
        assert len(ms.calls("PUT", ".")) == puts and ms.files(REPO) == expected

        # 4. with the client's default retries, one dropped attempt is healed inside the same run
        other = "forge-user/Other-GGUF"
        ms.drop_put[q8_oid] = 1
        del ms.blobs[q8_oid]  # as if blobs were stored per repo: this upload must send it
        r4 = run("publish", str(outdir), "--repo", other, "--hub", "modelscope", "--no-progress",
                 env=ms_env(tmp_path, ms))
        assert r4.returncode == 0, r4.stderr
        assert ms.files(other)["Tiny-Q8_0.gguf"] == expected["Tiny-Q8_0.gguf"]
        assert len(ms.calls("PUT", q8_oid)) == 3  # run 2's, the dropped one, the retry
    assert_no_token(r1.stdout, r1.stderr, r2.stdout, r2.stderr, r3.stdout, r3.stderr, r4.stdout, r4.stderr)
    for f in outdir.rglob("*"):
        assert not f.is_file() or TOKEN.encode() not in f.read_bytes()
    for data in expected.values():
        assert TOKEN.encode() not in data


def test_modelscope_token_never_printed_even_when_the_server_echoes_it(tmp_path):
    pytest.importorskip("modelscope_hub")
    from msserver import MsServer

    outdir = make_outdir(tmp_path / "out")
    with MsServer(TOKEN) as ms:
        ms.fail["commit"] = 400  # the error message repeats the Authorization header
        # with progress on, the client's own log lines are shown too: they are scrubbed as well
        r = run("publish", str(outdir), "--repo", REPO, "--hub", "modelscope", env=ms_env(tmp_path, ms))
        assert r.returncode == 2 and "Traceback" not in r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: uploading to") and "re-run" in last
        assert "Authorization: Bearer ***" in r.stderr  # the server's message reached the user, scrubbed
        r2 = run("publish", str(outdir), "--repo", REPO, "--hub", "modelscope", "--no-progress",
                 env=ms_env(tmp_path, ms, token="ms-wrong-token"))
        assert_user_error(r2, "refused the token")
    assert_no_token(r.stdout, r.stderr, r2.stdout, r2.stderr)
