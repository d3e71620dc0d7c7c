"""Named chat templates (Hermes 2 Pro's ``default`` + ``tool_use``) survive the conversion: every template of the
Hugging Face folder, read as transformers reads it, is written under llama.cpp's keys
(``tokenizer.chat_template``, ``tokenizer.chat_template.NAME``, ``tokenizer.chat_templates``), and the GGUF path of
`quantize modelfile` (TEMPLATE, LM Studio preset, model.yaml) gives what the HF path gives."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from gguf_forge import chat_template, files

import fixtures
from helpers import run

TEMPLATES = Path(__file__).parent / "data" / "templates"
DEFAULT = (TEMPLATES / "NousResearch-Hermes-2-Pro-Llama-3-8B-default.jinja").read_text(encoding="utf-8")
TOOL_USE = (TEMPLATES / "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja").read_text(encoding="utf-8")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "required": ["city"],
                                                          "properties": {"city": {"type": "string"}}}}}]


def _hermes_folder(out: Path, layout: str) -> Path:
    """The tiny Qwen2 fixture (ChatML tokens) with Hermes 2 Pro's two templates, laid out as
    ``list``: tokenizer_config.json's list of named templates (the Hub's Hermes-2-Pro-Llama-3-8B);
    ``files``: what transformers' save_pretrained writes today (chat_template.jinja +
    additional_chat_templates/tool_use.jinja); ``files-over-config``: those files beside another template in
    tokenizer_config.json, which transformers ignores (gguf-py would take it and lose tool_use)."""
    from transformers import AutoTokenizer

    shutil.copytree(fixtures.qwen2(), out)
    (out / "chat_template.jinja").unlink()
    config = json.loads((out / "tokenizer_config.json").read_text())
    if layout == "list":
        config["chat_template"] = [{"name": "default", "template": DEFAULT}, {"name": "tool_use", "template": TOOL_USE}]
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    else:
        tok = AutoTokenizer.from_pretrained(out)
        tok.chat_template = {"default": DEFAULT, "tool_use": TOOL_USE}
        tok.save_pretrained(out)
        assert (out / "additional_chat_templates" / "tool_use.jinja").is_file()
        if layout == "files-over-config":
            config = json.loads((out / "tokenizer_config.json").read_text())
            config["chat_template"] = "{{ 'an older template' }}"
            (out / "tokenizer_config.json").write_text(json.dumps(config))
    # what transformers itself reads from the folder: the reference
    assert AutoTokenizer.from_pretrained(out).chat_template == {"default": DEFAULT, "tool_use": TOOL_USE}
    return out


def _template_block(modelfile: Path) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', modelfile.read_text(), re.M | re.S).group(1)


@pytest.mark.parametrize("layout", ["list", "files", "files-over-config"])
def test_every_named_template_is_converted_and_the_gguf_modelfile_has_the_tools_template(tmp_path, layout):
    from gguf_forge.convert import convert

    hf = _hermes_folder(tmp_path / "hf", layout)
    assert chat_template.templates_from_hf_dir(hf) == {"default": DEFAULT, "tool_use": TOOL_USE}
    gguf = tmp_path / "m.gguf"
    convert(hf, gguf, outtype="q8_0", progress=False)
    reader = files.open_gguf(gguf)
    assert files.gguf_field(reader, "tokenizer.chat_template", str) == DEFAULT
    assert files.gguf_field(reader, "tokenizer.chat_template.tool_use", str) == TOOL_USE
    assert reader.fields["tokenizer.chat_templates"].contents() == ["tool_use"]

    # `quantize modelfile OUT.gguf` without --source: the GGUF alone gives the tools TEMPLATE, proven (the run
    # renders the tool suite with Jinja and Go before writing), the same as the HF folder gives
    r = run("modelfile", str(gguf), "-o", str(tmp_path / "from-gguf"), "--name", "hermes", "--require-tools",
            "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tools"] == "exact but JSON whitespace"
    r = run("modelfile", str(hf), "--gguf", str(gguf), "-o", str(tmp_path / "from-hf"), "--name", "hermes",
            "--require-tools", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tools"] == "exact but JSON whitespace"
    template = _template_block(tmp_path / "from-gguf" / "Modelfile")
    assert "{{- if .Tools }}" in template and "You are a function calling AI model." in template
    assert template == _template_block(tmp_path / "from-hf" / "Modelfile")
    for name in ("hermes.preset.json", "model.yaml"):
        assert (tmp_path / "from-gguf" / name).read_text() == (tmp_path / "from-hf" / name).read_text(), name
    assert "trainedForToolUse: true" in (tmp_path / "from-gguf" / "model.yaml").read_text()


@pytest.mark.slow
def test_llama_cpp_python_sees_the_named_template(tmp_path):
    """llama-cpp-python registers a chat handler per tokenizer.chat_template.NAME (its llama.py); the tool_use one
    renders the tools the way transformers renders the folder's tool_use template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    from gguf_forge.convert import convert
    from gguf_forge.runtime import load_model

    hf = _hermes_folder(tmp_path / "hf", "files")
    gguf = tmp_path / "m.gguf"
    convert(hf, gguf, outtype="q8_0", progress=False)
    llm = load_model(gguf, n_ctx=256, threads=1)
    assert llm.metadata["tokenizer.chat_template.tool_use"] == TOOL_USE
    assert {"chat_template.default", "chat_template.tool_use"} <= set(llm._chat_handlers)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    prompt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template.tool_use"], eos_token="<|im_end|>",
                                 bos_token="")(messages=messages, tools=TOOLS).prompt
    expected = AutoTokenizer.from_pretrained(hf).apply_chat_template(
        messages, tools=TOOLS, chat_template="tool_use", tokenize=False, add_generation_prompt=True)  # as the formatter does
    assert "<tools>" in prompt and "get_weather" in prompt
    assert prompt == expected


def test_a_template_given_by_the_user_replaces_the_named_ones_too(tmp_path):
    """The pipeline's --template (an override of tokenizer.chat_template) is the template the fine-tune was trained
    with: the folder's tool_use template does not stay behind in the GGUF (llama.cpp's server would take it for
    requests with tools), as --template replaces both in the Modelfile."""
    from gguf_forge.convert import convert
    from gguf_forge.convert.overrides import KVOverride

    hf = _hermes_folder(tmp_path / "hf", "list")
    gguf = tmp_path / "m.gguf"
    chatml = chat_template.named_template("chatml")
    convert(hf, gguf, outtype="q8_0", progress=False,
            overrides=[KVOverride("tokenizer.chat_template", "str", chatml)])
    reader = files.open_gguf(gguf)
    assert files.gguf_field(reader, "tokenizer.chat_template", str) == chatml
    assert [k for k in reader.fields if k.startswith("tokenizer.chat_template")] == ["tokenizer.chat_template"]
