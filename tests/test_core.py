"""The small core every layer uses: atomic writes, sizes, GGUF opening, chat-template resolution and rendering,
and the one llama.cpp log capture."""

from __future__ import annotations

import json
import os

import gguf
import numpy as np
import pytest

from gguf_forge import chat_template
from gguf_forge.errors import ForgeError
from gguf_forge.files import (
    atomic_path,
    build_cached,
    format_size,
    open_gguf,
    parse_size,
    remove_leftovers,
    write_files,
    write_text,
)
from gguf_forge.runtime import LlamaLog, load_model

# ---------------------------------------------------------------------------------------------- atomic writes


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    out = tmp_path / "model.gguf"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half a model")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    out = tmp_path / "Modelfile"
    out.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert out.read_text() == "old" and list(tmp_path.iterdir()) == [out]


def test_a_finished_write_replaces_the_file(tmp_path):
    out = tmp_path / "a.txt"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.txt.") and tmp.name.endswith(".partial")
        tmp.write_text("done")
    assert out.read_text() == "done" and list(tmp_path.iterdir()) == [out]


def test_write_text_leaves_an_unchanged_file_alone(tmp_path):
    out = tmp_path / "manifest.json"
    assert write_text(out, "{}\n")
    before = out.stat().st_mtime_ns
    os.utime(out, ns=(before - 10**9, before - 10**9))
    assert not write_text(out, "{}\n")
    assert out.stat().st_mtime_ns == before - 10**9
    assert write_text(out, "{\"a\": 1}\n") and out.read_text() == "{\"a\": 1}\n"
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file's mode, not a temp file's


def test_write_files_writes_all_or_nothing(tmp_path):
    good, bad = tmp_path / "Modelfile", tmp_path / "missing-folder" / "preset.json"
    with pytest.raises(OSError):
        write_files({good: "FROM x", bad: "{}"})
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_written_atomically_and_leftovers_are_removed(tmp_path):
    dest = tmp_path / "merged"
    with pytest.raises(ValueError):
        with atomic_path(dest, directory=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".model.gguf.123.partial").write_bytes(b"left by a killed run")
    assert [p.name for p in remove_leftovers(tmp_path)] == [".model.gguf.123.partial"]
    built = build_cached(dest, lambda folder: (folder / "config.json").write_text("{}"))
    assert (built / "config.json").read_text() == "{}"
    assert build_cached(dest, lambda folder: pytest.fail("built twice")) == dest


# ---------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("text,expected", [
    ("50G", 50 * 1000**3), ("5GB", 5 * 1000**3), ("5gb", 5 * 1000**3), ("1.5M", 1_500_000), ("500MB", 500 * 1000**2),
    ("2GiB", 2 * 2**30), ("512KiB", 512 * 1024), ("1000000", 1_000_000), (" 3 T ", 3 * 1000**4),
])
def test_sizes_are_read_as_llama_gguf_split_reads_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "five GB", "-1G", "0", "5 XB", "1.2.3G"])
def test_a_bad_size_is_refused(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_sizes_are_printed_in_binary_units():
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(5 * 2**30) == "5.0 GiB"


# ---------------------------------------------------------------------------------------------- GGUF


def _tiny_gguf(path, arch="llama"):
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_name("tiny")
    w.add_tensor("x.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_every_bad_gguf_is_one_error_naming_the_file(tmp_path):
    good = _tiny_gguf(tmp_path / "good.gguf")
    assert open_gguf(good).fields["general.name"].contents() == "tiny"
    with pytest.raises(ForgeError, match="missing.gguf: no such file"):
        open_gguf(tmp_path / "missing.gguf")
    (tmp_path / "notes.gguf").write_text("hello")
    with pytest.raises(ForgeError, match="notes.gguf: not a GGUF file"):
        open_gguf(tmp_path / "notes.gguf")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ForgeError, match="cut.gguf: cannot read it as GGUF.*truncated"):
        open_gguf(tmp_path / "cut.gguf")


def test_log_captures_do_not_take_llama_cpps_callback_from_each_other(tmp_path):
    """A model load (which captures the log) and then a second capture: the second still hears llama.cpp."""
    alien = _tiny_gguf(tmp_path / "alien.gguf", arch="nosucharch")
    with LlamaLog() as outer:
        with pytest.raises(ForgeError, match="nosucharch"):
            load_model(alien)  # its own capture opens and closes inside
        heard = len(outer.lines)
        assert heard and any("nosucharch" in line for line in outer.lines)
    with LlamaLog() as later:
        with pytest.raises(ForgeError):
            load_model(alien)
    assert any("nosucharch" in line for line in later.lines)
    assert len(outer.lines) == heard  # a closed capture hears nothing more


# ---------------------------------------------------------------------------------------------- chat templates

CHATML = chat_template.named_template("chatml")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]


def test_template_resolution_has_one_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert chat_template.load(source) == source  # Jinja text as given
    (tmp_path / "chatml").write_text("{{ 'a file named like a template' }}")
    assert chat_template.load("chatml") == "{{ 'a file named like a template' }}"  # a file before a name
    (tmp_path / "chatml").unlink()
    assert chat_template.load("chatml") == CHATML  # then the named template
    assert chat_template.resolve(None, "{{ 'own' }}") == "{{ 'own' }}"  # the model's own when none is given
    assert chat_template.resolve("chatml", "{{ 'own' }}") == CHATML  # the user's choice wins
    assert chat_template.resolve(None, [{"name": "tool_use", "template": "t"},
                                        {"name": "default", "template": "d"}]) == "d"


def test_an_unknown_template_names_the_choices(tmp_path):
    with pytest.raises(ForgeError) as e:
        chat_template.load("nosuch")
    assert "nosuch" in str(e.value) and all(n in str(e.value) for n in chat_template.named_templates())
    (tmp_path / "latin1.jinja").write_bytes("{{ 'caf\xe9' }}".encode("latin-1"))
    with pytest.raises(ForgeError, match="UTF-8"):
        chat_template.load(str(tmp_path / "latin1.jinja"))


def test_hf_folder_template_precedence(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "from tokenizer_config"}')
    assert chat_template.from_hf_dir(tmp_path) == "from tokenizer_config"
    (tmp_path / "chat_template.json").write_text('{"chat_template": "from chat_template.json"}')
    assert chat_template.from_hf_dir(tmp_path) == "from chat_template.json"
    (tmp_path / "chat_template.jinja").write_text("from chat_template.jinja")
    assert chat_template.from_hf_dir(tmp_path) == "from chat_template.jinja"


def test_rendering_matches_transformers():
    from transformers.utils.chat_template_utils import render_jinja_template

    tools = [{"type": "function", "function": {"name": "get_weather", "description": "天气",
                                               "parameters": {"type": "object", "properties": {}}}}]
    template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                "{% if tools %}{{ tools | tojson }}{% endif %}{% generation %}x{% endgeneration %}"
                "{% for i in range(3) %}{% if i == 1 %}{% break %}{% endif %}{{ i }}{% endfor %}")
    for name in chat_template.named_templates():
        for gen in (True, False):
            ours = chat_template.render(chat_template.named_template(name), CHAT, add_generation_prompt=gen,
                                        bos_token="<s>", eos_token="</s>")
            theirs, _ = render_jinja_template(conversations=[CHAT], chat_template=chat_template.named_template(name),
                                              add_generation_prompt=gen, bos_token="<s>", eos_token="</s>")
            assert ours == theirs[0], name
    theirs, _ = render_jinja_template(conversations=[CHAT], chat_template=template, tools=tools)
    assert chat_template.render(template, CHAT, tools=tools) == theirs[0]


def test_render_errors_are_forge_errors_and_the_turn_end_is_found():
    with pytest.raises(ForgeError, match="does not parse"):
        chat_template.render("{% for %}", CHAT)
    with pytest.raises(ForgeError, match="no system messages"):
        chat_template.render("{{ raise_exception('no system messages') }}", CHAT)
    assert chat_template.turn_end(CHATML) == "<|im_end|>\n"
    assert chat_template.turn_end(chat_template.named_template("llama3")).startswith("<|eot_id|>")


def test_conversion_reads_the_same_template_as_everything_else(tmp_path):
    """A folder with both tokenizer_config.json's chat_template and chat_template.jinja: the GGUF gets the one
    transformers (and the Modelfile, chat and imatrix calibration) use, chat_template.jinja."""
    import shutil

    from gguf_forge.convert.tokenizer import load_vocab

    from fixtures import fixture_dir

    folder = shutil.copytree(fixture_dir("qwen2"), tmp_path / "m", ignore=shutil.ignore_patterns(".complete"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}))
    (folder / "chat_template.jinja").write_text(CHATML.replace("<|im_start|>", "<|im_start|> "))
    vocab = load_vocab(folder, n_vocab=json.loads((folder / "config.json").read_text())["vocab_size"])
    assert vocab.special.chat_template == chat_template.from_hf_dir(folder) == (folder / "chat_template.jinja").read_text()
