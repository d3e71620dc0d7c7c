"""Hostile and broken input, the output side (issue 14): signals during quantization, output paths that are not
regular files, `--name` path tricks, concurrent runs into one folder, inputs checked before the long steps, full
disks and usage errors.

Every case asserts what a user sees: exit 2 and one `error: ...` line (130 and one line for a signal), no
traceback, no file under a final name, nothing outside the output folder touched.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gguf_forge.errors import ForgeError
from gguf_forge.files import atomic_path, exclusive_lock, partial_path, remove_leftovers, write_files, write_text
from gguf_forge.quant import parse_types
from gguf_forge.tools.pipeline import PipelineConfig, run_pipeline
from gguf_forge.tools.pipeline.run import check_name

import adapters
from fixtures import fixture_dir
from helpers import QUANTIZE, assert_user_error, run


def tree(folder: Path) -> set[str]:
    """Every path under ``folder`` (relative), to show what a command created or left."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def qwen2() -> str:
    return str(fixture_dir("qwen2"))


@pytest.fixture(scope="module")
def smol_f16(tmp_path_factory) -> Path:
    """SmolLM2 135M as F16 (270 MB): big enough that llama.cpp's quantizer runs for a few seconds."""
    from gguf_forge.convert import convert

    out = tmp_path_factory.mktemp("smol") / "smol-F16.gguf"
    convert(fixture_dir("smollm2"), out, outtype="f16", progress=False)
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory) -> Path:
    """The tiny Qwen2 as F16 (2 MB): for refusals, which happen before any quantization."""
    from gguf_forge.convert import convert

    out = tmp_path_factory.mktemp("tiny") / "tiny-F16.gguf"
    convert(fixture_dir("qwen2"), out, outtype="f16", progress=False)
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


def _interrupt_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 300) -> tuple[str, str]:
    """Send ``sig`` to ``proc`` once ``ready()`` (its quantizer is writing), then collect its output."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.01)
        assert proc.poll() is None, "the command ended before it could be interrupted while quantizing"
        time.sleep(0.2)  # well inside llama_model_quantize
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out, err


def assert_interrupted(proc: subprocess.Popen, err: str) -> None:
    assert proc.returncode == 130, (proc.returncode, err)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert lines == ["interrupted: partial output removed, nothing written under a final name"], err


# ---------------------------------------------------------------------------------------------- 1: signals


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_quant_stops_on_a_signal_and_writes_nothing(tmp_path, smol_f16, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([*QUANTIZE, "quant", str(smol_f16), "--type", "Q4_K_M", "-o", str(out), "--threads", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    _, err = _interrupt_when(proc, lambda: bool(list(out.glob(".smol-Q4_K_M.gguf.*.partial"))), sig)
    assert time.time() - t0 < 60
    assert_interrupted(proc, err)
    assert list(out.iterdir()) == []  # no final name, no temporary file
    assert sorted(p.name for p in smol_f16.parent.iterdir()) == ["smol-F16.gguf"]


@pytest.mark.slow
def test_pipeline_stops_on_a_signal_while_quantizing_then_resumes(tmp_path):
    base = fixture_dir("smollm2")
    out = tmp_path / "out"
    args = ["merge-convert", "--base", str(base), "-o", str(out), "--quant", "Q4_K_M,Q5_K_M", "--name", "m",
            "--no-progress", "--threads", "2"]
    proc = subprocess.Popen([*QUANTIZE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = _interrupt_when(proc, lambda: bool(list(out.glob(".m-Q4_K_M.gguf.*.partial"))), signal.SIGINT)
    assert_interrupted(proc, err)
    assert not (out / "m-Q4_K_M.gguf").exists() and not (out / "manifest.json").exists()
    assert not list(out.glob(".*.partial"))
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "merge + convert" not in r.stdout  # the finished intermediate is reused
    assert "quantize Q4_K_M" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["file"] for o in manifest["outputs"] if o["kind"] == "gguf"] == ["m-Q4_K_M.gguf", "m-Q5_K_M.gguf"]
    assert not list(out.glob(".*.partial"))


# ---------------------------------------------------------------------------------------------- 2: non-regular targets


def _special(tmp_path: Path, kind: str) -> Path:
    target = tmp_path / "target.gguf"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "link-to-device":  # a link, so a regression replaces the link, never the device itself
        target.symlink_to("/dev/full")
    elif kind == "folder":
        target.mkdir()
    elif kind == "socket":
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.bind(str(target))
        s.close()
    return target


@pytest.mark.parametrize("kind,words", [("fifo", "named pipe"), ("link-to-device", "character device"),
                                        ("folder", "a folder"), ("socket", "socket")])
def test_a_non_regular_target_is_refused_and_kept(tmp_path, kind, words):
    target = _special(tmp_path, kind)
    before = os.lstat(target)
    with pytest.raises(ForgeError, match=words):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"GGUF")
    with pytest.raises(ForgeError, match=words):
        write_files({target: "FROM x"})
    assert os.lstat(target).st_mode == before.st_mode and tree(tmp_path) == {"target.gguf"}


def test_write_text_refuses_a_fifo_without_blocking_on_it(tmp_path):
    fifo = tmp_path / "Modelfile"
    os.mkfifo(fifo)
    with pytest.raises(ForgeError, match="named pipe"):
        write_text(fifo, "FROM x")
    assert tree(tmp_path) == {"Modelfile"}


@pytest.mark.parametrize("kind", ["fifo", "link-to-device"])
def test_convert_into_a_fifo_or_device_is_refused(tmp_path, kind):
    target = _special(tmp_path, kind)
    r = run("convert", qwen2(), "-o", str(target), "--no-progress")
    assert_user_error(r, str(target), "not a regular file")
    assert tree(tmp_path) == {"target.gguf"}


@pytest.mark.slow
def test_quant_into_a_fifo_is_refused(tmp_path, tiny_f16):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "tiny-Q8_0.gguf")
    r = run("quant", str(tiny_f16), "--type", "Q8_0", "-o", str(out))
    assert_user_error(r, "tiny-Q8_0.gguf", "named pipe")
    assert tree(tmp_path) == {"out", "out/tiny-Q8_0.gguf"}


# ---------------------------------------------------------------------------------------------- 3: --name


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "a\\b", "..", ".", ".hidden", "", "x\0y"])
def test_a_name_with_a_path_in_it_is_refused(name):
    with pytest.raises(ForgeError, match="one file-name component"):
        check_name(name)


@pytest.mark.parametrize("name", ["my-model", "Qwen2.5 0.5B", "模型"])
def test_a_plain_name_is_accepted(name):
    check_name(name)


@pytest.mark.parametrize("name", ["../../escaped", str(Path("/tmp") / "absolute-name")])
def test_merge_convert_refuses_a_name_outside_the_folder(tmp_path, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    r = subprocess.run([*QUANTIZE, "merge-convert", "--base", qwen2(), "-o", "out", "--name", name, "--no-progress"],
                       capture_output=True, text=True, cwd=work)
    assert_user_error(r, "--name", "one file-name component")
    assert tree(tmp_path) == {"a", "a/b"}
    assert not list(Path("/tmp").glob("absolute-name*"))


# ---------------------------------------------------------------------------------------------- 4: OUTDIR lock


def _holder(lock: Path) -> subprocess.Popen:
    """Another process holding ``lock`` (as a running merge-convert does) until killed."""
    code = ("import sys, time; from pathlib import Path; from gguf_forge.files import exclusive_lock\n"
            "with exclusive_lock(Path(sys.argv[1]), 'x'):\n    print('locked', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_a_busy_folder_is_refused_and_leaves_the_first_alone(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out / ".gguf-forge" / "lock")
    try:
        # the first run's work in progress, written under its pid
        in_progress = out / f".model-Q8_0.gguf.{holder.pid}.partial"
        in_progress.write_bytes(b"GGUF half")
        before = tree(tmp_path)
        r = run("merge-convert", "--base", qwen2(), "-o", str(out), "--no-progress")
        assert_user_error(r, str(out), "is in use by PID", str(holder.pid))
        assert tree(tmp_path) == before and in_progress.read_bytes() == b"GGUF half"
        with pytest.raises(ForgeError, match=f"in use by PID {holder.pid}"):
            with exclusive_lock(out / ".gguf-forge" / "lock", str(out)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(out / ".gguf-forge" / "lock", str(out)):  # the lock goes with its process
        pass


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_are_removed_only_when_their_writer_is_gone(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        time.sleep(0.05)
        live = tmp_path / f".a.gguf.{sleeper.pid}.partial"
        live.write_bytes(b"x")
        mine = partial_path(tmp_path / "b.gguf")
        mine.write_bytes(b"x")
        dead = tmp_path / f".c.gguf.{_dead_pid()}.partial"
        dead.write_bytes(b"x")
        reused = tmp_path / f".d.gguf.{sleeper.pid}.partial"  # written long before that process started
        reused.write_bytes(b"x")
        os.utime(reused, (time.time() - 3600, time.time() - 3600))
        odd = tmp_path / ".e.partial"  # no pid in the name
        odd.write_bytes(b"x")
        folder = tmp_path / f".merged.{_dead_pid()}.partial"
        folder.mkdir()
        removed = {p.name for p in remove_leftovers(tmp_path)}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert removed == {dead.name, reused.name, odd.name, folder.name}
    assert tree(tmp_path) == {live.name, mine.name}


# ---------------------------------------------------------------------------------------------- 6: inputs up front


def _bad_utf8(path: Path) -> Path:
    path.write_bytes(b"\xff\xfe not UTF-8 \x80\n" * 3)
    return path


def _chats(path: Path) -> Path:
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    return path


@pytest.mark.parametrize("option,make,words", [
    ("--eval", lambda d: _bad_utf8(d / "held-out.txt"), ["--eval", "held-out.txt", "UTF-8"]),
    ("--imatrix", lambda d: _bad_utf8(d / "calib.txt"), ["--imatrix", "calib.txt", "UTF-8"]),
    ("--imatrix", lambda d: _bad_utf8(d / "chats.jsonl"), ["--imatrix", "chats.jsonl", "UTF-8"]),
    ("--imatrix", lambda d: _chats(d / "chats.jsonl"), ["--imatrix", "chats.jsonl", "JSON"]),
    ("--template", lambda d: _bad_utf8(d / "chat.jinja"), ["--template", "chat.jinja", "UTF-8"]),
])
def test_merge_convert_checks_every_input_before_the_first_step(tmp_path, option, make, words):
    bad = make(tmp_path)
    before = tree(tmp_path)
    r = run("merge-convert", "--base", qwen2(), "-o", str(tmp_path / "out"), option, str(bad), "--no-progress")
    assert_user_error(r, *words)
    assert tree(tmp_path) == before  # the folder was not even made


def test_bad_smoke_prompts_stop_the_pipeline_before_the_folder_is_made(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": ""}\n')
    cfg = PipelineConfig(base=qwen2(), outdir=tmp_path / "out", smoke=True, smoke_prompts=str(prompts))
    with pytest.raises(ForgeError, match="prompts.jsonl"):
        run_pipeline(cfg, log=lambda _: None)
    assert tree(tmp_path) == {"prompts.jsonl"}


# ---------------------------------------------------------------------------------------------- 5/9: output paths


@pytest.mark.parametrize("args,words", [
    (["convert", "{qwen2}", "-o", "{file}/sub/x.gguf"], ["{file}"]),
    (["merge-convert", "--base", "{qwen2}", "-o", "{file}/sub"], ["-o", "{file}", "not a folder"]),
    (["convert", "{qwen2}", "-o", "/proc/gguf-forge-test.gguf"], ["/proc/gguf-forge-test.gguf"]),
    (["merge-convert", "--base", "{qwen2}", "-o", "/proc/gguf-forge-test"], ["-o", "/proc/gguf-forge-test"]),
], ids=["convert-under-a-file", "merge-convert-under-a-file", "convert-proc", "merge-convert-proc"])
def test_an_output_path_that_cannot_be_written_is_one_line(tmp_path, args, words):
    (tmp_path / "file").write_text("a file, not a folder")
    fill = {"qwen2": qwen2(), "file": tmp_path / "file"}
    r = run(*[a.format(**fill) for a in args], "--no-progress")
    assert_user_error(r, *[w.format(**fill) for w in words])
    assert tree(tmp_path) == {"file"}
    assert not Path("/proc/gguf-forge-test.gguf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("out", ["{file}/sub", "/proc/gguf-forge-test"], ids=["under-a-file", "proc"])
def test_quant_into_a_folder_that_cannot_be_made_is_one_line(tmp_path, tiny_f16, out):
    (tmp_path / "file").write_text("a file, not a folder")
    r = run("quant", str(tiny_f16), "--type", "Q8_0", "-o", out.format(file=tmp_path / "file"))
    assert_user_error(r, "-o")
    assert tree(tmp_path) == {"file"}


@pytest.mark.slow
@pytest.mark.parametrize("extra,words", [
    (["--type", "IQ2_XS"], ["IQ2_XS", "--imatrix"]),
    (["--type", "Q4_K_M", "--tensor-type", "attn_v"], ["--tensor-type", "REGEX=TYPE"]),
    (["--type", "Q4_K_M", "--output-tensor-type", "q9_x"], ["--output-tensor-type", "q9_x"]),
    (["--type", "Q4_K_M", "--imatrix", "{tmp}/missing.gguf"], ["missing.gguf"]),
])
def test_quant_makes_no_output_folder_for_refused_input(tmp_path, tiny_f16, extra, words):
    r = run("quant", str(tiny_f16), "-o", str(tmp_path / "new" / "dir"), *[a.format(tmp=tmp_path) for a in extra])
    assert_user_error(r, *words)
    assert tree(tmp_path) == set()


def _limited(limit: int):
    """preexec_fn: a file-size limit, so writes past ``limit`` bytes fail as on a full disk (EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("command", ["convert", "merge-convert", "merge"])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, command):
    out = tmp_path / "out"
    if command == "convert":
        args = ["convert", qwen2(), "-o", str(tmp_path / "x.gguf")]
    elif command == "merge-convert":
        args = ["merge-convert", "--base", qwen2(), "-o", str(out)]
    else:
        args = ["merge", "--base", str(fixture_dir("smollm2")), "--lora", str(adapters.adapter("plain")), "-o", str(out)]
    r = subprocess.run([*QUANTIZE, *args, "--no-progress"], capture_output=True, text=True,
                       preexec_fn=_limited(200_000))
    assert_user_error(r, "File too large", "nothing was written")
    left = tree(tmp_path)
    assert not [p for p in left if p.endswith((".gguf", ".safetensors", ".partial", "manifest.json"))], left


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_no_space_while_writing_is_a_forge_error_and_no_file(tmp_path, code, monkeypatch):
    out = tmp_path / "model.gguf"
    with pytest.raises(ForgeError, match="nothing was written"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"GGUF")
            raise OSError(code, os.strerror(code))
    assert tree(tmp_path) == set()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(ForgeError, match="Modelfile"):
        write_files({tmp_path / "Modelfile": "FROM x", tmp_path / "preset.json": "{}"})
    assert tree(tmp_path) == set()


# ---------------------------------------------------------------------------------------------- 9: duplicates


@pytest.mark.parametrize("text,expected", [
    ("Q8_0,q8_0", ["Q8_0"]), ("Q4_K_M,Q8_0,q4_k_m", ["Q4_K_M", "Q8_0"]), (" q5_k_m , Q5_K_M,Q5_K_M", ["Q5_K_M"]),
])
def test_a_type_named_twice_is_made_once_in_first_place(text, expected):
    assert parse_types(text) == expected


def test_merge_convert_lists_a_duplicate_type_once(tmp_path):
    out = tmp_path / "out"
    r = run("merge-convert", "--base", qwen2(), "-o", str(out), "--quant", "Q8_0,q8_0,Q4_0,Q8_0", "--name", "m",
            "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["options"]["quant"] == ["Q8_0", "Q4_0"]
    assert [o["file"] for o in manifest["outputs"] if o["kind"] == "gguf"] == ["m-Q8_0.gguf", "m-Q4_0.gguf"]
    assert not list(out.glob(".*.partial"))


# ---------------------------------------------------------------------------------------------- 9: usage errors


@pytest.mark.parametrize("args,words", [
    (["quant"], ["Missing argument", "see quantize quant --help"]),
    (["quant", "x.gguf"], ["Missing option '--type'", "see quantize quant --help"]),
    (["quant", "x.gguf", "--type", "Q8_0", "--bogus"], ["--bogus", "see quantize quant --help"]),
    (["--bogus"], ["--bogus", "see quantize --help"]),
    (["no-such-command"], ["no-such-command", "see quantize --help"]),
    (["convert", "x", "--ctx", "5000000000"], ["--ctx", "5000000000", "see quantize convert --help"]),
    (["merge-convert", "--base", "x", "-o", "o", "--outtype", "q4"], ["--outtype", "see quantize merge-convert"]),
    (["chat", "x.gguf", "--threads", "zero"], ["--threads", "see quantize chat --help"]),
])
def test_a_usage_error_is_one_line(tmp_path, args, words):
    r = subprocess.run([*QUANTIZE, *args], capture_output=True, text=True, cwd=tmp_path)
    assert_user_error(r, *words)
    assert "Usage:" not in r.stderr and tree(tmp_path) == set()
