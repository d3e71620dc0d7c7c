"""More hostile and broken input (issue 14), beyond the causes the issue listed: GGUF metadata of the wrong type or
not UTF-8, a chat template in a GGUF that llama-cpp-python would have compiled (and exhausted memory on) while
loading it, JSON nested too deeply, publish manifests that list a file twice or through a loop, sampling values and
context lengths a Modelfile cannot use, outputs that are one of the run's own inputs, and stdin that is not UTF-8.

Every case asserts exit 2 and one ``error: ...`` line, no traceback, nothing under a final name, and (where an input
could have been overwritten) the input unchanged. Most commands run in this process through click's runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as T

from gguf_forge.convert import convert
from gguf_forge.errors import ForgeError
from gguf_forge.quant.imatrix import load_calibration
from gguf_forge.tools.pipeline.run import _State

from fixtures import fixture_dir
from helpers import QUANTIZE, assert_user_error
from hostile import assert_nothing_written, cli, copy_model, edit_json, write_json

CT = "tokenizer.chat_template"
DEEP = "[" * 100_000 + "]" * 100_000


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny Qwen2 as F16 (1 MB)."""
    out = tmp_path_factory.mktemp("more") / "tiny-F16.gguf"
    convert(fixture_dir("qwen2"), out, outtype="f16", progress=False)
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


def rewrite(src: Path, dst: Path, changes: dict[str, tuple | None]) -> Path:
    """A copy of the GGUF ``src`` with metadata keys replaced ((type, value[, array item type])) or removed (None)."""
    r = gguf.GGUFReader(src)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(dst, arch=arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in changes:
            continue
        if f.types[0] == T.ARRAY:
            items = [bytes(f.parts[i]) if f.types[-1] == T.STRING else f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(name, items, T.ARRAY, sub_type=f.types[-1])
        elif f.types[0] == T.STRING:
            w.add_key_value(name, bytes(f.parts[f.data[0]]), T.STRING)
        else:
            w.add_key_value(name, f.parts[f.data[0]].tolist()[0], f.types[0])
    for key, change in changes.items():
        if change is not None:
            w.add_key_value(key, change[1], change[0], sub_type=change[2] if len(change) > 2 else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _limited(args: list[str]) -> subprocess.CompletedProcess:
    """``quantize ARGS`` in a process limited to 8 GiB of address space: a regression fails, not the machine."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    return subprocess.run([*QUANTIZE, *args], capture_output=True, text=True, preexec_fn=limit, timeout=300)



# ---------------------------------------------------------------------------------------------- GGUF metadata

METADATA = {
    "template an integer": ({CT: (T.UINT32, 7)}, [CT, "not text"]),
    "template an array": ({CT: (T.ARRAY, ["a", "b"], T.STRING)}, [CT, "not text"]),
    "template not UTF-8": ({CT: (T.STRING, b"\xff\xfe{{ x }}")}, [CT, "not UTF-8"]),
    "name not UTF-8": ({"general.name": (T.STRING, b"\xff\xfe")}, ["general.name", "not UTF-8"]),
    "eos id a string": ({"tokenizer.ggml.eos_token_id": (T.STRING, "x")}, ["eos_token_id", "not an integer"]),
}
MODELFILE_ONLY = {
    "context a string": ({"qwen2.context_length": (T.STRING, "big")}, ["context_length", "not an integer"]),
    "context negative": ({"qwen2.context_length": (T.INT32, -5)}, ["context_length", "-5"]),
    "context zero": ({"qwen2.context_length": (T.UINT32, 0)}, ["context_length", "is 0"]),
    "context a float": ({"qwen2.context_length": (T.FLOAT32, 1.5)}, ["context_length", "not an integer"]),
    "name an integer": ({"general.name": (T.INT32, 3)}, ["general.name", "not text"]),
}
METADATA_CASES = [(c, k) for c in ("inspect", "inspect --json", "modelfile") for k in METADATA] + \
    [("modelfile", k) for k in MODELFILE_ONLY]


@pytest.mark.parametrize("command,case", METADATA_CASES)
def test_gguf_metadata_of_the_wrong_type_is_one_line(command, case, tiny, tmp_path):
    changes, words = {**METADATA, **MODELFILE_ONLY}[case]
    bad = rewrite(tiny, tmp_path / "bad.gguf", changes)
    out = tmp_path / "out"
    out.mkdir()
    args = command.split() + [bad] + (["-o", out] if command == "modelfile" else [])
    assert_user_error(cli(*args), str(bad), *words)
    assert_nothing_written(out)


@pytest.mark.parametrize("template,words", [
    ('{{ "a" * 10000000000 }}', ["16,777,216 characters"]),  # jinja2 folds this constant when it compiles
    ("{% for %}", ["does not parse"]),
], ids=["a constant that folds to 10 GB", "a syntax error"])
def test_a_hostile_template_in_a_gguf_is_refused_by_our_sandbox_not_compiled_on_load(template, words, tiny, tmp_path):
    """llama-cpp-python compiles every template in a GGUF's metadata while loading it; jinja2's constant folding
    then built the 10 GB text before a line of ours ran (the OOM killer ended it). A real process, limited to
    8 GiB of address space, so a regression fails here rather than taking the machine's memory."""
    bad = rewrite(tiny, tmp_path / "bad.gguf", {CT: (T.STRING, template)})
    assert_user_error(_limited(["smoke", str(bad), "--max-tokens", "2", "--no-progress"]), *words)


@pytest.mark.parametrize("option", ["smoke --prompts", "eval --text"])
def test_a_text_input_that_never_ends_is_refused(option, tiny):
    """``/dev/zero`` as the prompts or the evaluation text: read to the end, it took all the memory (MemoryError)."""
    command, flag = option.split()
    extra = [str(tiny)] if command == "eval" else []
    r = _limited([command, str(tiny), *extra, flag, "/dev/zero", "--no-progress"])
    assert_user_error(r, flag, "/dev/zero", "a device")


# ---------------------------------------------------------------------------------------------- JSON nested deeply


def _deep_prompts(tmp: Path) -> list[Any]:
    (tmp / "p.jsonl").write_text(DEEP + "\n")
    return ["smoke", "{tiny}", "--prompts", tmp / "p.jsonl", "--no-progress"], ["p.jsonl:1", "nested too deeply"]


def _deep_config(tmp: Path) -> list[Any]:
    m = copy_model(tmp / "m")
    (m / "config.json").write_text(DEEP)
    return ["convert", m, "-o", tmp / "out" / "m.gguf", "--no-progress"], ["config.json", "nested too deeply"]


def _deep_generation_config(tmp: Path) -> list[Any]:
    m = copy_model(tmp / "m")
    (m / "generation_config.json").write_text(DEEP)
    return ["modelfile", m, "--gguf", "{tiny}", "-o", tmp / "out"], ["generation_config.json", "nested too deeply"]


def _deep_manifest(tmp: Path) -> list[Any]:
    d = tmp / "out"
    (d / "manifest.json").write_text(DEEP)
    return ["publish", d, "--repo", "me/x", "--dry-run"], ["manifest.json", "unreadable"]


@pytest.mark.parametrize("make", [_deep_prompts, _deep_config, _deep_generation_config, _deep_manifest],
                         ids=["smoke prompts", "config.json", "generation_config.json", "publish manifest"])
def test_json_nested_too_deeply_is_one_line(make, tiny, tmp_path):
    (tmp_path / "out").mkdir()
    args, words = make(tmp_path)
    assert_user_error(cli(*[str(tiny) if a == "{tiny}" else a for a in args]), *words)
    assert [p.name for p in (tmp_path / "out").iterdir()] in ([], ["manifest.json"])


def test_calibration_json_nested_too_deeply_is_one_line(tmp_path):
    (tmp_path / "c.jsonl").write_text(DEEP + "\n")
    with pytest.raises(ForgeError, match="c.jsonl:1: JSON nested too deeply"):
        load_calibration(str(tmp_path / "c.jsonl"), "{{ messages }}")


@pytest.mark.parametrize("state", [[], {"hashes": 5, "steps": []}, {"hashes": {"a": 1}, "steps": {"convert": 5}},
                                   {"steps": {"convert": {"key": "k", "files": [1]}}}, DEEP],
                         ids=["a list", "wrong types", "wrong entries", "files a list", "nested too deeply"])
def test_a_damaged_pipeline_state_is_forgotten_not_trusted(state, tmp_path):
    path = tmp_path / ".gguf-forge" / "state.json"
    path.parent.mkdir()
    path.write_text(state if isinstance(state, str) else json.dumps(state))
    s = _State(tmp_path)
    assert all(isinstance(v, list) for v in s.hashes.values())
    assert not s.done("convert", "k", [tmp_path / "x.gguf"])


# ---------------------------------------------------------------------------------------------- publish manifests

def _manifest(d: Path, tiny: Path, files: list[str]) -> None:
    shutil.copy(tiny, d / "m.gguf")
    os.symlink("loop.gguf", d / "loop.gguf")
    outputs = [{"file": f, "sha256": sha(tiny)} for f in files]
    (d / "manifest.json").write_text(json.dumps({"tool": {"name": "gguf-forge"}, "outputs": outputs}))


@pytest.mark.parametrize("files,words", [
    (["m\x00.gguf"], ["outside the folder"]),
    (["m.gguf", "m.gguf"], ["'m.gguf' is listed twice"]),
    (["m.gguf", "./m.gguf"], ["'./m.gguf' is listed twice"]),
    (["loop.gguf"], ["'loop.gguf' is outside the folder"]),
], ids=["a NUL in a name", "a file twice", "a file under two spellings", "a symlink loop"])
def test_a_hostile_manifest_is_refused_before_any_upload(files, words, tiny, tmp_path):
    _manifest(tmp_path, tiny, files)
    assert_user_error(cli("publish", tmp_path, "--repo", "me/x", "--dry-run", "--no-progress"), "manifest.json", *words)


# ---------------------------------------------------------------------------------------------- Modelfile sources

SOURCES: dict[str, tuple[Callable[[Path], Any], list[str]]] = {
    "temperature NaN": (lambda m: (m / "generation_config.json").write_text('{"do_sample": true, "temperature": NaN}'),
                        ["generation_config.json", "temperature", "nan"]),
    "top_p infinite": (lambda m: (m / "generation_config.json").write_text('{"do_sample": true, "top_p": Infinity}'),
                       ["generation_config.json", "top_p", "inf"]),
    "top_k huge": (lambda m: (m / "generation_config.json").write_text('{"do_sample": true, "top_k": 1e400}'),
                   ["generation_config.json", "top_k"]),
    "temperature negative": (lambda m: write_json(m / "generation_config.json", {"temperature": -1}),
                             ["generation_config.json", "temperature", "-1"]),
    "context a string": (lambda m: edit_json(m / "config.json", lambda c: c.update(max_position_embeddings="x")),
                         ["config.json", "max_position_embeddings", "'x'"]),
    "text_config a list": (lambda m: edit_json(m / "config.json", lambda c: (
        c.pop("max_position_embeddings"), c.update(text_config=[1]))), None),
}


@pytest.mark.parametrize("case", sorted(SOURCES))
def test_sampling_and_context_a_modelfile_cannot_use_are_refused(case, tiny, tmp_path):
    change, words = SOURCES[case]
    m = copy_model(tmp_path / "m")
    change(m)
    out = tmp_path / "out"
    out.mkdir()
    r = cli("modelfile", m, "--gguf", tiny, "-o", out)
    if words is None:  # no context length to read there: the default is used, no traceback
        assert r.returncode == 0, r.stderr
        return
    assert_user_error(r, *words)
    assert_nothing_written(out)


def test_a_chat_template_list_of_junk_in_tokenizer_config_is_one_line(tmp_path):
    m = copy_model(tmp_path / "m")
    edit_json(m / "tokenizer_config.json", lambda c: c.update(chat_template=[1, "x", {"name": 5, "template": None}]))
    (tmp_path / "out").mkdir()
    assert_user_error(cli("convert", m, "-o", tmp_path / "out" / "m.gguf", "--no-progress"), "chat_template",
                      "a list of")
    assert_nothing_written(tmp_path / "out")


# ---------------------------------------------------------------------------------------------- outputs that are inputs


def _convert_over(name: str) -> Callable[[Path, Path], tuple[list[Any], Path]]:
    def make(tmp: Path, tiny: Path) -> tuple[list[Any], Path]:
        m = copy_model(tmp / "m")
        return ["convert", m, "-o", m / name, "--no-progress"], m / name
    return make


def _imatrix_over_weights(tmp: Path, tiny: Path) -> tuple[list[Any], Path]:
    m = copy_model(tmp / "m")
    (tmp / "cal.txt").write_text("hello world " * 100)
    return ["imatrix", m, "--calibration", tmp / "cal.txt", "-o", m / "model.safetensors", "--no-progress"], \
        m / "model.safetensors"


def _imatrix_over_calibration(tmp: Path, tiny: Path) -> tuple[list[Any], Path]:
    m = copy_model(tmp / "m")
    (tmp / "cal.txt").write_text("hello world " * 100)
    return ["imatrix", m, "--calibration", tmp / "cal.txt", "-o", tmp / "cal.txt", "--no-progress"], tmp / "cal.txt"


def _quant_over_itself(tmp: Path, tiny: Path) -> tuple[list[Any], Path]:
    convert(fixture_dir("qwen2"), tmp / "x-F16.gguf", outtype="f32", progress=False)  # an F32 file named F16
    return ["quant", tmp / "x-F16.gguf", "--type", "F16"], tmp / "x-F16.gguf"


def _pipeline_into_the_base(tmp: Path, tiny: Path) -> tuple[list[Any], Path]:
    m = copy_model(tmp / "m")
    return ["merge-convert", "--base", m, "-o", m, "--quant", "Q8_0", "--no-progress"], m / "README.md"


@pytest.mark.parametrize("make,words", [
    (_convert_over("model.safetensors"), ["model.safetensors", "inputs"]),
    (_convert_over("config.json"), ["config.json", "inputs"]),
    (_imatrix_over_weights, ["model.safetensors", "inputs"]),
    (_imatrix_over_calibration, ["cal.txt", "inputs"]),
    (_quant_over_itself, ["x-F16.gguf", "replace the input itself"]),
    (_pipeline_into_the_base, ["-o", "folder of an input model"]),
], ids=["convert over the weights", "convert over config.json", "imatrix over the weights",
        "imatrix over the calibration", "quant F16 over its misnamed F32 input", "merge-convert into the base's folder"])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(make, words, tiny, tmp_path):
    args, victim = make(tmp_path, tiny)
    before = sha(victim)
    listing = sorted(p.name for p in victim.parent.iterdir())
    assert_user_error(cli(*args), *words)
    assert sha(victim) == before
    assert sorted(p.name for p in victim.parent.iterdir()) == listing


def test_an_earlier_gguf_in_the_model_folder_may_still_be_replaced(tmp_path):
    m = copy_model(tmp_path / "m")
    assert cli("convert", m, "-o", m / "m-F16.gguf", "--no-progress").returncode == 0
    r = cli("convert", m, "-o", m / "m-F16.gguf", "--no-progress")
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------- chat stdin


def test_a_scripted_chat_line_that_is_not_utf8_is_one_line(tiny):
    r = subprocess.run([*QUANTIZE, "chat", str(tiny), "--max-tokens", "2"], input=b"\xff\xfe hi\n",
                       capture_output=True, timeout=300)
    ran = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                  r.stderr.decode())
    assert_user_error(ran, "not UTF-8")


# ---------------------------------------------------------------------------------------------- non-finite options


@pytest.mark.parametrize("args", [["smoke", "--min-speed", "nan"], ["smoke", "--min-speed", "inf"],
                                  ["chat", "--temp", "nan"], ["chat", "--temp", "inf"], ["chat", "--top-p", "nan"]],
                         ids=lambda a: " ".join(a))
def test_a_non_finite_sampling_or_speed_option_is_a_usage_error(args, tiny):
    command, option, value = args
    assert_user_error(cli(command, tiny, option, value), option, "not a finite number")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_modelfile_of_a_fifo_or_device_is_refused_without_reading_it(kind, tmp_path):
    """It opened the path to look for the GGUF magic: a FIFO nobody writes to hung the command."""
    model = tmp_path / "model.gguf"
    if kind == "fifo":
        os.mkfifo(model)
    else:
        model = Path("/dev/zero")
    r = subprocess.run([*QUANTIZE, "modelfile", str(model), "-o", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120)
    assert_user_error(r, str(model), "neither a GGUF file")
    assert not (tmp_path / "out").exists()


def test_quantizing_to_the_type_the_input_already_is_keeps_it(tiny, tmp_path):
    """Model-F16.gguf --type F16 names the input itself: it is the result, not rewritten (nor refused)."""
    src = shutil.copy(tiny, tmp_path / "x-F16.gguf")
    before = (sha(src), src.stat().st_mtime_ns)
    r = cli("quant", src, "--type", "F16", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["output"] == str(src)
    assert (sha(src), src.stat().st_mtime_ns) == before
