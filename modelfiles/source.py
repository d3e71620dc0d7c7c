"""What a Modelfile needs to know about a model: chat template, special tokens, context, sampling, license."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import chat_template, files
from ..errors import ForgeError
from ..keys import GENERAL, LLM, TOKENIZER, arch_key

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "LICENSE.rst")


@dataclass
class ModelInfo:
    """Facts read from a GGUF's metadata or a Hugging Face directory."""

    name: str
    template: str | None
    bos: str = ""
    eos: str = ""
    end_tokens: list[str] = field(default_factory=list)  # eos / eot / eom token texts
    add_bos: bool | None = None
    context_length: int | None = None
    license_name: str | None = None
    tool_template: str | None = None  # a separate "tool_use" template (Hermes 2 Pro), used for requests with tools
    named_templates: dict[str, str] = field(default_factory=dict)  # every template by name ("default", "tool_use"...)


def gguf_templates(reader: Any) -> dict[str, str]:
    """A GGUF's chat templates by name: ``tokenizer.chat_template`` (``default``) and every
    ``tokenizer.chat_template.NAME`` (listed in ``tokenizer.chat_templates`` by llama.cpp's converter and ours;
    found by key, as llama-cpp-python does, so a file without the list still has them)."""
    out: dict[str, str] = {}
    default = files.gguf_field(reader, TOKENIZER.CHAT_TEMPLATE, str)
    if default is not None:
        out["default"] = default
    prefix = TOKENIZER.CHAT_TEMPLATE_N.format(name="")
    for key in reader.fields:
        if key.startswith(prefix) and key != TOKENIZER.CHAT_TEMPLATES:
            value = files.gguf_field(reader, key, str)
            if value is not None:
                out[key[len(prefix):]] = value
    return out


def read_gguf(path: Path) -> ModelInfo:
    """Chat template, special-token texts, add_bos, context length and name from a GGUF's metadata."""
    reader = files.open_gguf(path)
    tokens = reader.fields.get(TOKENIZER.LIST)

    def token(key: str) -> str:
        i = files.gguf_field(reader, key, int)
        if i is None or tokens is None or not 0 <= i < len(tokens.data):
            return ""
        try:
            return tokens.contents(i)
        except UnicodeDecodeError:
            raise ForgeError(f"{path}: token {i} ({key}) is not UTF-8 text; re-convert the model") from None

    arch = files.gguf_field(reader, GENERAL.ARCHITECTURE, str) or ""
    ctx = files.gguf_field(reader, arch_key(LLM.CONTEXT_LENGTH, arch), int)
    if ctx is not None and ctx < 1:
        raise ForgeError(f"{path}: metadata {arch_key(LLM.CONTEXT_LENGTH, arch)} is {ctx}, not a context length; "
                         "re-convert the model")
    ends = [t for t in (token(TOKENIZER.EOS_ID), token(TOKENIZER.EOT_ID), token(TOKENIZER.EOM_ID)) if t]
    add_bos = files.gguf_field(reader, TOKENIZER.ADD_BOS, bool)
    named = gguf_templates(reader)
    return ModelInfo(
        name=files.gguf_field(reader, GENERAL.NAME, str) or path.stem,
        template=named.get("default"),
        tool_template=named.get("tool_use"),
        named_templates=named,
        bos=token(TOKENIZER.BOS_ID),
        eos=token(TOKENIZER.EOS_ID),
        end_tokens=list(dict.fromkeys(ends)),
        add_bos=None if add_bos is None else bool(add_bos),
        context_length=ctx,
        license_name=files.gguf_field(reader, GENERAL.LICENSE, str),
    )


def special_token_text(value: Any, where: object = "tokenizer_config.json", key: str = "token") -> str:
    """A special token's text: a string, or an AddedToken-style object with ``content``; anything else (a number, a
    list) is a ForgeError naming the file and key, never its ``str()`` taken as the token."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value or ""
    raise ForgeError(f"{where}: {key} must be the token's text, got {value!r:.60}")


def read_hf_dir(path: Path) -> ModelInfo:
    """Chat templates (see :func:`gguf_forge.chat_template.templates_from_hf_dir`) and special tokens of a HF
    folder."""
    tc = files.read_json_object(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    named = chat_template.templates_from_hf_dir(path)
    template = chat_template.from_hf_dir(path)
    config = files.read_json_object(path / "config.json") if (path / "config.json").is_file() else {}
    text_config = config.get("text_config")
    ctx = config.get("max_position_embeddings") or (
        text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None)
    if ctx is not None and (isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 1):
        raise ForgeError(f"{path / 'config.json'}: max_position_embeddings must be a positive integer, got {ctx!r}")
    eos = special_token_text(tc.get("eos_token"), path / "tokenizer_config.json", "eos_token")
    bos = special_token_text(tc.get("bos_token"), path / "tokenizer_config.json", "bos_token")
    return ModelInfo(name=path.resolve().name, template=template, bos=bos, eos=eos,
                     end_tokens=[eos] if eos else [], add_bos=tc.get("add_bos_token"),
                     context_length=ctx, tool_template=named.get("tool_use"), named_templates=named)


def sampling_defaults(folder: Path | None) -> dict[str, float | int]:
    """Ollama-named sampling parameters from ``generation_config.json`` (greedy when do_sample is false)."""
    if folder is None or not (folder / "generation_config.json").is_file():
        return {}
    gc = files.read_json_object(folder / "generation_config.json")
    if gc.get("do_sample") is False:
        return {"temperature": 0.0}
    out: dict[str, float | int] = {}
    for hf, ollama, typ in (("temperature", "temperature", float), ("top_p", "top_p", float),
                            ("top_k", "top_k", int), ("min_p", "min_p", float),
                            ("repetition_penalty", "repeat_penalty", float)):
        value = gc.get(hf)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise ForgeError(f"{folder / 'generation_config.json'}: {hf} must be a finite number >= 0, got {value}")
            out[ollama] = typ(value)
    return out


def license_text(folder: Path | None) -> str | None:
    """The text of the model's LICENSE file, if the folder has one."""
    if folder is None:
        return None
    for name in LICENSE_FILES:
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8", errors="replace").strip("\n")
    return None
