"""Hostile chat templates and tokenizer configs given to ``quantize modelfile`` and ``quantize audit``: a syntax
error, endless recursion, a huge loop, bytes that are not UTF-8, a template that refuses every conversation with
raise_exception, a chat_template or special token of the wrong type. Each is one ``error:`` line, exit 2, no
traceback, nothing written, in bounded time."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import gguf
import pytest
from gguf.constants import GGUFValueType

from gguf_forge import chat_template
from gguf_forge.errors import ForgeError

from helpers import assert_user_error, run

translate = importlib.import_module("gguf_forge.modelfiles.translate")

TEMPLATES = {  # template -> words of the one-line error (modelfile, audit)
    "a syntax error": ("{% for m in messages %}{{ m.content }", ["does not parse as Jinja", "line 1"]),
    "endless recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{% for m in messages %}{{ f() }}{% endfor %}",
                          ["chat template", "recur"]),
    "a huge loop": ("{% for m in messages %}{{ m.content }}{% for i in range(100000) %}{% for j in range(100000) %}"
                    "{% endfor %}{% endfor %}{% endfor %}", ["chat template", "longer than 10 s"]),
    "raise_exception for every conversation": ("{{ raise_exception('This model takes no conversations.\nNone.') }}",
                                               ["This model takes no conversations. None."]),
}


def _gguf(path: Path, template: object = None, kind: GGUFValueType | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "<s>", "</s>"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if kind is not None:
        w.add_key_value("tokenizer.chat_template", template, kind)
    elif template is not None:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _check(r, tmp: Path, *words: str) -> None:
    assert_user_error(r, *words)
    assert not (tmp / "out").exists() or not any((tmp / "out").iterdir())


@pytest.mark.parametrize("case", sorted(TEMPLATES))
@pytest.mark.parametrize("command", ["modelfile", "audit"])
def test_a_hostile_template_in_a_gguf_is_one_line(case, command, tmp_path):
    template, words = TEMPLATES[case]
    model = _gguf(tmp_path / "m.gguf", template)
    t0 = time.monotonic()
    r = run(command, str(model), *(["-o", str(tmp_path / "out")] if command == "modelfile" else []))
    _check(r, tmp_path, *words)
    assert time.monotonic() - t0 < 60  # one render hits the 10 s limit, never every probe of the translation


@pytest.mark.parametrize("command", ["modelfile", "audit"])
def test_a_template_that_is_not_utf8_is_one_line(command, tmp_path):
    model = _gguf(tmp_path / "m.gguf", "{% for m in messages %}XQXQ{{ m.content }}{% endfor %}")
    model.write_bytes(model.read_bytes().replace(b"XQXQ", b"\xff\xfe\x80X"))
    r = run(command, str(model), *(["-o", str(tmp_path / "out")] if command == "modelfile" else []))
    _check(r, tmp_path, "tokenizer.chat_template", "not UTF-8")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    (folder / "chat_template.jinja").write_bytes(b"{% for m in messages %}\xff{{ m.content }}{% endfor %}")
    r = run(command, str(folder), *(["--gguf", str(model), "-o", str(tmp_path / "out")]
                                     if command == "modelfile" else []))
    _check(r, tmp_path, "chat_template.jinja", "not UTF-8")


def test_a_template_file_that_is_not_utf8_or_does_not_parse_is_one_line(tmp_path):
    model = _gguf(tmp_path / "m.gguf", "{% for m in messages %}{{ m.content }}</s>{% endfor %}")
    (tmp_path / "bad.jinja").write_bytes(b"\xff\xfe{{ messages }}")
    _check(run("modelfile", str(model), "--template", str(tmp_path / "bad.jinja"), "-o", str(tmp_path / "out")),
           tmp_path, "bad.jinja", "not UTF-8")
    _check(run("modelfile", str(model), "--template", "{{ x", "-o", str(tmp_path / "out")), tmp_path,
           "does not parse as Jinja")


GGUF_TYPES = {"a number": (5, GGUFValueType.UINT32), "a list": (["a", "b"], GGUFValueType.ARRAY)}


@pytest.mark.parametrize("case", sorted(GGUF_TYPES))
@pytest.mark.parametrize("command", ["modelfile", "audit"])
def test_a_gguf_chat_template_of_the_wrong_type_is_one_line(case, command, tmp_path):
    model = _gguf(tmp_path / "m.gguf", *GGUF_TYPES[case])
    r = run(command, str(model), *(["-o", str(tmp_path / "out")] if command == "modelfile" else []))
    _check(r, tmp_path, "tokenizer.chat_template", "not text")


CONFIG = {  # tokenizer_config.json values -> words; the model was once taken as having no template at all
    "chat_template a number": ({"chat_template": 5}, ["chat_template must be text", "a number"]),
    "chat_template an object": ({"chat_template": {"default": "x"}}, ["chat_template must be text", "an object"]),
    "chat_template true": ({"chat_template": True}, ["chat_template must be text"]),
    "chat_template a list of junk": ({"chat_template": [1, "x"]}, ["chat_template must be text"]),
    "eos_token a number": ({"eos_token": 5}, ["eos_token", "text"]),
    "bos_token a list": ({"bos_token": ["<s>"]}, ["bos_token", "text"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG))
@pytest.mark.parametrize("command", ["modelfile", "audit"])
def test_a_tokenizer_config_value_of_the_wrong_type_is_one_line(case, command, tmp_path):
    change, words = CONFIG[case]
    folder = tmp_path / "hf"
    folder.mkdir()
    config = {"eos_token": "</s>", "bos_token": "<s>",
              "chat_template": "{% for m in messages %}{{ m.content }}</s>{% endfor %}", **change}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    model = _gguf(tmp_path / "m.gguf")
    r = run(command, str(folder), *(["--gguf", str(model), "-o", str(tmp_path / "out")]
                                     if command == "modelfile" else []))
    _check(r, tmp_path, "tokenizer_config.json", *words)


def test_a_template_just_under_the_render_limit_cannot_keep_modelfile_busy(monkeypatch):
    """Each render stays under the 10 s limit, but a translation renders the template hundreds of times: one budget
    for all of them (60 s; 1 s here) ends it with one line."""
    monkeypatch.setattr(translate, "TRANSLATE_SECONDS", 1.0)
    slow = ("{% for m in messages %}{{ m.content }}</s>{% for i in range(300) %}{% for j in range(1000) %}"
            "{% endfor %}{% endfor %}{% endfor %}")
    chat_template.render(slow, [{"role": "user", "content": "hi"}])  # one render is quick enough
    t0 = time.monotonic()
    with pytest.raises(ForgeError, match="took more than 1 s in all") as info:
        translate.translate(slow, eos="</s>")
    assert "\n" not in str(info.value) and time.monotonic() - t0 < 10
    # a real template translates well within the budget
    translate.translate(chat_template.named_template("chatml"), eos="<|im_end|>")
