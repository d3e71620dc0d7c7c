"""Hostile and broken text input (issue 14, cause 10 and parts of causes 5 and 9).

Chat templates written to exhaust memory or time, calibration / evaluation / template files that are not UTF-8 or
not chats, broken legacy and GGUF imatrix files, contexts too large for the machine, a scripted chat whose turn
fails, and transformers' "Loading weights" bar under ``--no-progress``. Every refusal is one line, ``error: ...`` and
exit 2 at the command line, a one-line ForgeError in the library; nothing is written under a final name.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from gguf_forge import chat_template
from gguf_forge.errors import ForgeError
from gguf_forge.quant import IMatrix, read_imatrix, write_gguf
from gguf_forge.quant.imatrix import load_calibration

from fixtures import fixture_dir
from helpers import QUANTIZE, assert_user_error

# -- chat templates that would take all the memory or all the time ---------------------------------------------------
HOSTILE_TEMPLATES = {
    "string times a huge number": '{{ "a" * 10000000000 }}',
    "list times a huge number": "{{ [1] * 10000000000 }}",
    "a huge number from a variable": '{% set n = 10000000000 %}{{ "a" * n }}',
    "doubling with +": '{% set ns = namespace(x="a") %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}'
                       "{% endfor %}{{ ns.x }}",
    "doubling with ~": '{% set ns = namespace(x="a") %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}'
                       "{% endfor %}{{ ns.x }}",
    "a huge power": "{{ 10 ** 100000000 }}",
    "squaring a number": "{% set ns = namespace(x=99) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
                         "{% endfor %}{{ ns.x }}",
    "a huge range": "{{ range(10000000)|list|length }}",
    "a %-format width": '{{ "%0999999999d" % 1 }}',
    "a format() width": '{{ "{:>999999999}".format(1) }}',
    "a width from the arguments": '{{ "{:{}}".format(1, 999999999) }}',
    "the format filter": '{{ "%0999999999d"|format(1) }}',
    "center": '{{ "a"|center(999999999) }}',
    "str.ljust": '{{ "a".ljust(999999999) }}',
    "str.expandtabs": '{% set t = "\t" * 1000000 %}{{ t.expandtabs(1000000) }}',
    "replace with an empty needle": '{% set s = "a" * 1000000 %}{{ s|replace("", s) }}',
    "str.replace": '{% set s = "a" * 1000000 %}{{ s.replace("", s) }}',
    "indent": '{% set s = "\n" * 1000000 %}{{ s|indent(1000000) }}',
    "wordwrap": '{% set s = "a " * 1000000 %}{{ s|wordwrap(1, wrapstring="x" * 1000000) }}',
    "join of a repeated text": '{% set b = "a" * 1000000 %}{{ ([b] * 1000000)|join }}',
    "str.join of a generator": '{{ "".join(range(100000)|map("string")|map("center", 1000000)) }}',
    "tojson of a repeated text": '{% set b = "a" * 1000000 %}{{ ([b] * 1000000)|tojson }}',
    "tojson with a huge indent": "{{ [[[[[[[[1]]]]]]]]|tojson(indent=100000000) }}",
    "printing a repeated list": '{% set b = "a" * 1000000 %}{{ [b] * 1000000 }}',
    "a block of repeated text": '{% set b = "a" * 1000000 %}{% set x %}{% for i in range(100000) %}{{ b }}'
                                "{% endfor %}{% endset %}{{ x|length }}",
    "slices kept in a block": '{% set s = "a" * 16000000 %}{% set x %}{% for i in range(100000) %}{{ s[1:] }}'
                              "{% endfor %}{% endset %}",
    "output of repeated text": '{% set b = "a" * 1000000 %}{% for i in range(100000) %}{{ b }}{% endfor %}',
    "text made and dropped": '{% set b = "a" * 10000000 %}{% for i in range(100000) %}{% set c = b + "x" %}'
                             "{% endfor %}",
    "a namespace holding itself": "{% set ns = namespace(a=1) %}{% set ns.b = ns %}{{ ns }}",
    "lipsum": "{{ lipsum(1000000000) }}",
    "strftime_now": '{{ strftime_now("%c" * 10000000) }}',
    "int.to_bytes": '{{ (1).to_bytes(10000000000, "big") }}',
    "str.translate": '{% set s = "a" * 1000000 %}{{ s.translate({97: s}) }}',
    "a source too long": "{{ 'x' }}" * 200000,
    # time: (MAX_SECONDS is lowered to 1 s for these)
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops over one range": "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}"
                                   "{% endfor %}",
    "nested loops over a text": '{% set s = "a" * 100000 %}{% for i in s %}{% for j in s %}{% endfor %}{% endfor %}',
    "exponential macro calls": "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
                               "{{ f(60) }}",
    # Python's own limits: one line too
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "nested too deeply": "{{ " + "(" * 500 + "1" + ")" * 500 + " }}",
    "too many nested loops": "".join("{%% for i%d in [1] %%}" % i for i in range(30)) + "{% endfor %}" * 30,
    "an include": '{% include "x" %}',
    "a division by zero": "{% set a = 0 %}{{ 1 / a }}",
}
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_a_hostile_template_is_one_line_error_in_bounded_time_and_memory(name, monkeypatch):
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(ForgeError) as info:
        chat_template.render(HOSTILE_TEMPLATES[name], MESSAGES)
    seconds = time.monotonic() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # KiB on Linux
    message = str(info.value)
    assert "\n" not in message and "chat template" in message, message
    assert seconds < 20, seconds
    assert grown < 2**31, grown


def test_real_templates_render_long_conversations_within_the_limits():
    """Every shipped template, a 400-message conversation of 2,000-character messages (800 KB of prompt)."""
    conv = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} " + "word " * 400} for i in range(400)]
    for name in chat_template.named_templates():
        out = chat_template.render(chat_template.named_template(name), conv, bos_token="<s>", eos_token="</s>")
        assert len(out) > 400 * 2000 and "399 word" in out, name
    # a template that builds its prompt by adding to a namespace (quadratic in the turns) still renders
    accumulating = ("{% set ns = namespace(p='') %}{% for m in messages %}{% set ns.p = ns.p + m.role + ': ' + "
                    "m.content + '\n' %}{% endfor %}{{ ns.p }}")
    assert len(chat_template.render(accumulating, conv[:100])) > 100 * 2000


# -- calibration files --------------------------------------------------------------------------------------------
CALIBRATION = {
    "not UTF-8 text": ("calib.txt", b"\xff\xfe not UTF-8 \x80\n", ["calib.txt", "UTF-8"]),
    "not UTF-8 JSONL": ("chats.jsonl", b'{"messages": [{"role": "user", "content": "\xff"}]}\n', ["chats.jsonl",
                                                                                                  "UTF-8"]),
    "a line that is an array": ("chats.jsonl", b"[1,2,3]\n", ["chats.jsonl:1", "array", "messages"]),
    "messages that are a string": ("chats.jsonl", b'{"messages": "hello"}\n', ["chats.jsonl:1", "'messages'",
                                                                               "string", "list"]),
    "a ShareGPT value that is a number": ("chats.jsonl", b'{"conversations": [{"from": "human", "value": 5}]}\n',
                                          ["chats.jsonl:1", "'value'", "number", "text"]),
    "a message that is a number": ("chats.jsonl", b'{"messages": [5]}\n', ["chats.jsonl:1", "item 1", "'role'"]),
    "content that is an object": ("chats.jsonl", b'{"messages": [{"role": "user", "content": {"a": 1}}]}\n',
                                  ["chats.jsonl:1", "'content'", "object"]),
    "a later line of another shape": ("chats.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n\n'
                                                     b'{"text": "hi"}\n', ["chats.jsonl:3", "conversations"]),
    "a line that is not JSON": ("chats.jsonl", b"hello\n", ["chats.jsonl:1", "not JSON"]),
    "an empty conversation": ("chats.jsonl", b'{"conversations": []}\n', ["chats.jsonl:1", "non-empty list"]),
}


@pytest.mark.parametrize("case", sorted(CALIBRATION))
def test_a_broken_calibration_file_names_the_file_and_line(case, tmp_path):
    name, data, words = CALIBRATION[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ForgeError) as info:
        load_calibration(str(tmp_path / name), chat_template.named_template("chatml"))
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, (w, message)


def test_a_hostile_template_on_calibration_chats_names_the_line(tmp_path):
    (tmp_path / "chats.jsonl").write_text(json.dumps({"messages": MESSAGES}) + "\n")
    with pytest.raises(ForgeError, match=r"chats.jsonl:1: the chat template makes"):
        load_calibration(str(tmp_path / "chats.jsonl"), '{{ "a" * 10000000000 }}')


# -- imatrix files ------------------------------------------------------------------------------------------------
def _legacy(entries: list[tuple[bytes, int, int, bytes]], trailer: bytes = struct.pack("<ii", 2, 4) + b"data",
            count: int | None = None) -> bytes:
    """A legacy .dat: [(name, ncall, nval, raw values)]."""
    out = struct.pack("<i", len(entries) if count is None else count)
    for name, ncall, nval, raw in entries:
        out += struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, nval) + raw
    return out + trailer


ONE = (b"blk.0.attn_q.weight", 2, 4, np.ones(4, "<f4").tobytes())
LEGACY = {
    "a negative entry count": _legacy([ONE], count=-5),
    "an absurd entry count": _legacy([ONE], count=1_000_000),
    "a negative call count": _legacy([(ONE[0], -3, 4, ONE[3])]),
    "a negative value count": _legacy([(ONE[0], 2, -1, ONE[3])]),
    "more values than the file holds": _legacy([(ONE[0], 2, 1_000_000, ONE[3])]),
    "a zero-length name": _legacy([(b"", 2, 4, ONE[3])]),
    "an entry twice": _legacy([ONE, ONE]),
    "non-finite values": _legacy([(ONE[0], 2, 4, np.array([1, np.nan, 1, 1], "<f4").tobytes())]),
    "negative values": _legacy([(ONE[0], 2, 4, np.array([1, -1, 1, 1], "<f4").tobytes())]),
    "a negative chunk count": _legacy([ONE], trailer=struct.pack("<ii", -7, 4) + b"data"),
    "a dataset name past the end": _legacy([ONE], trailer=struct.pack("<ii", 2, 1000) + b"data"),
    "a truncated entry": _legacy([ONE])[:20],
}


@pytest.mark.parametrize("case", sorted(LEGACY))
def test_a_broken_legacy_imatrix_is_refused(case, tmp_path):
    path = tmp_path / "broken.dat"
    path.write_bytes(LEGACY[case])
    with pytest.raises(ForgeError) as info:
        read_imatrix(path)
    assert "broken.dat" in str(info.value) and "\n" not in str(info.value)


def test_a_valid_legacy_imatrix_still_reads(tmp_path):
    path = tmp_path / "good.dat"
    path.write_bytes(_legacy([ONE]))
    im = read_imatrix(path, chunk_size=16)
    assert im.chunk_count == 2 and im.datasets == ["data"]
    assert np.allclose(im.means()["blk.0.attn_q.weight"], 0.5)  # stored as mean * ncall


@pytest.mark.parametrize("case", ["counts that do not match", "negative counts", "non-finite sums"])
def test_a_broken_gguf_imatrix_is_refused(case, tmp_path):
    im = IMatrix(datasets=["d"], chunk_count=1, chunk_size=16)
    im.sums["blk.0.attn_q.weight"] = np.ones((1, 8))
    im.counts["blk.0.attn_q.weight"] = {"counts that do not match": np.ones(3), "negative counts": np.array([-4.0]),
                                        "non-finite sums": np.ones(1)}[case]
    if case == "non-finite sums":
        im.sums["blk.0.attn_q.weight"][0, 3] = np.inf
    write_gguf(im, tmp_path / "broken.gguf")
    with pytest.raises(ForgeError, match="broken.gguf.*blk.0.attn_q"):
        read_imatrix(tmp_path / "broken.gguf")


# -- the command line -------------------------------------------------------------------------------------------
def quantize(cwd: Path, *args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``quantize ARGS`` run in ``cwd`` as a user would (stdin a pipe)."""
    return subprocess.run([*QUANTIZE, *args], cwd=cwd, input=stdin or "", capture_output=True, text=True,
                          env=os.environ, timeout=timeout)


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    from gguf_forge.convert import convert

    out = tmp_path_factory.mktemp("hostile-text") / "tiny-F16.gguf"
    convert(fixture_dir("qwen2"), out, outtype="f16", progress=False)
    return out


@pytest.fixture
def work(tmp_path, gguf_file) -> Path:
    """A folder with the model and every input file; a test checks it holds nothing new afterwards."""
    shutil.copy(gguf_file, tmp_path / "model.gguf")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not UTF-8 \x80\n" * 50)
    (tmp_path / "array.jsonl").write_text("[1,2,3]\n")
    (tmp_path / "hostile.jinja").write_text('{{ "a" * 10000000000 }}')
    (tmp_path / "slow.jinja").write_text("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                                         "{% endfor %}")
    (tmp_path / "negative.dat").write_bytes(LEGACY["a negative entry count"])
    (tmp_path / "out").mkdir()
    return tmp_path


def assert_untouched(work: Path, before: set[str]) -> None:
    assert files_in(work) == before, files_in(work) ^ before


CTX_COMMANDS = {  # every command with --ctx, given an otherwise valid-looking command line
    "chat": ["chat", "model.gguf"],
    "smoke": ["smoke", "model.gguf"],
    "eval": ["eval", "model.gguf", "model.gguf", "--text", "bad.txt"],
    "imatrix": ["imatrix", "model", "-o", "out/imatrix.gguf"],
    "modelfile": ["modelfile", "model.gguf", "-o", "out"],
    "convert": ["convert", "model", "-o", "out/model.gguf"],
    "merge-convert": ["merge-convert", "--base", "model", "-o", "out"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(CTX_COMMANDS))
def test_a_context_beyond_32_bits_is_refused_by_every_command(command, work):
    if "model" in CTX_COMMANDS[command]:
        shutil.copytree(fixture_dir("qwen2"), work / "model", ignore=shutil.ignore_patterns(".complete"))
    before = files_in(work)
    assert_user_error(quantize(work, *CTX_COMMANDS[command], "--ctx", "5000000000"), "--ctx", "5000000000")
    assert_untouched(work, before)


CLI_CASES = {
    # a hostile template at the start of a chat: one line before any turn
    "chat, a template too big": (["chat", "model.gguf", "--threads", "1", "--template", "hostile.jinja"], "hi\n",
                                 ["chat template", "16,777,216"]),
    "chat, a template too slow": (["chat", "model.gguf", "--threads", "1", "--template", "slow.jinja"], "hi\n",
                                  ["chat template", "10 s"]),
    # a context this machine cannot hold: about the context, not the file
    "chat, a context too large": (["chat", "model.gguf", "--threads", "1", "--ctx", "2147483647"], "hi\n",
                                  ["--ctx 2147483647", "too large"]),
    "chat, a context of 2**32": (["chat", "model.gguf", "--threads", "1", "--ctx", "4294967296"], "hi\n",
                                 ["--ctx", "4294967296"]),
    "smoke, a template too big": (["smoke", "model.gguf", "--threads", "1", "--template", "hostile.jinja"], None,
                                  ["chat template", "16,777,216"]),
    "smoke, a context too large": (["smoke", "model.gguf", "--threads", "1", "--ctx", "2147483647"], None,
                                   ["--ctx 2147483647", "too large"]),
    # a scripted chat whose turn fails ends there, exit 2 (interactively only the turn would end)
    "chat, a scripted turn that fails": (["chat", "model.gguf", "--threads", "1", "--ctx", "64"],
                                         "word " * 2000 + "\nhi\n", ["too long", "--ctx"]),
    "eval, text not UTF-8": (["eval", "model.gguf", "model.gguf", "--text", "bad.txt"], None,
                             ["--text", "bad.txt", "UTF-8"]),
    "eval, a context longer than the text": (["eval", "model.gguf", "model.gguf", "--text", "hostile.jinja", "--ctx",
                                              "2147483647"], None, ["--ctx 2147483647", "--text"]),
    "modelfile, a template too big": (["modelfile", "model.gguf", "--template", "hostile.jinja", "-o", "out"], None,
                                      ["chat template", "16,777,216"]),
    "quant, a legacy imatrix with a negative count": (["quant", "model.gguf", "--type", "Q8_0", "--imatrix",
                                                       "negative.dat", "-o", "out"], None,
                                                      ["--imatrix", "negative.dat"]),
    "imatrix, calibration not UTF-8": (["imatrix", "model", "--calibration", "bad.txt", "-o", "out/im.gguf"], None,
                                       ["--calibration", "bad.txt", "UTF-8"]),
    "imatrix, a calibration line that is an array": (["imatrix", "model", "--calibration", "array.jsonl", "-o",
                                                      "out/im.gguf"], None, ["array.jsonl:1", "array"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_broken_text_input_is_one_line_and_writes_nothing(case, work):
    args, stdin, words = CLI_CASES[case]
    if "model" in args:
        shutil.copytree(fixture_dir("qwen2"), work / "model", ignore=shutil.ignore_patterns(".complete"))
    before = files_in(work)
    r = quantize(work, *args, stdin=stdin)
    assert_user_error(r, *words)
    assert "file may be truncated" not in r.stderr
    assert_untouched(work, before)


@pytest.mark.slow
def test_a_hostile_template_in_a_model_does_not_hang_convert(tmp_path):
    """convert renders the model's template to find the end-of-turn token: bounded, and said in one line."""
    model = shutil.copytree(fixture_dir("qwen2"), tmp_path / "model", ignore=shutil.ignore_patterns(".complete"))
    (model / "chat_template.jinja").write_text('{{ "a" * 10000000000 }}')
    t0 = time.monotonic()
    r = quantize(tmp_path, "convert", "model", "-o", "out.gguf", "--no-progress", timeout=120)
    assert time.monotonic() - t0 < 60
    assert "Traceback" not in r.stderr and r.returncode in (0, 2), r.stderr
    assert [line for line in r.stderr.splitlines() if "16,777,216" in line], r.stderr


@pytest.mark.slow
def test_a_chat_template_file_not_utf8_is_one_line(tmp_path):
    model = shutil.copytree(fixture_dir("qwen2"), tmp_path / "model", ignore=shutil.ignore_patterns(".complete"))
    (model / "chat_template.jinja").write_bytes(b"{% for m in messages %}\xff{{ m.content }}{% endfor %}")
    before = files_in(tmp_path)
    r = quantize(tmp_path, "convert", "model", "-o", "out.gguf")
    assert_user_error(r, "model")
    assert "utf-8" in r.stderr.lower()
    assert_untouched(tmp_path, before)


@pytest.mark.slow
def test_imatrix_no_progress_hides_transformers_bar(tmp_path):
    out = tmp_path / "im.gguf"
    r = quantize(tmp_path, "imatrix", str(fixture_dir("qwen2")), "--ctx", "16", "--chunks", "2", "--no-progress",
                 "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "Loading weights" not in r.stderr and "%|" not in r.stderr, r.stderr
    assert out.is_file()
