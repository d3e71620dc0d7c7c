"""``write_modelfile``: read the model, translate and verify its template, then write every file atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import chat_template, files
from ..errors import ForgeError
from .lmstudio import legacy_preset, model_yaml, preset
from .ollama import modelfile_text
from .source import ModelInfo, license_text, read_gguf, read_hf_dir, sampling_defaults
from .translate import Translation, translate

#: num_ctx when --ctx is not given: the model's trained context, capped (a 128k KV cache would not fit a laptop)
DEFAULT_CTX_CAP = 8192


@dataclass
class ModelfileResult:
    """What :func:`write_modelfile` wrote and decided."""

    modelfile: Path
    preset: Path
    legacy_preset: Path | None
    stops: list[str]
    system: str | None
    warnings: list[str] = field(default_factory=list)
    template: str = ""  # the Go template written as TEMPLATE
    num_ctx: int = 0
    manual: bool = False  # whether the preset carries LM Studio's manual prefix/suffix form
    model_yaml: Path | None = None  # LM Studio's model definition beside the preset
    tools: str = "none"  # tools/thinking in the TEMPLATE: none / exact / exact but JSON whitespace / refused


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug or "model"


def _read_model(model: Path) -> ModelInfo:
    if model.is_dir():
        return read_hf_dir(model)
    if not model.exists():
        raise ForgeError(f"{model}: no such file or directory")
    if not files.is_gguf(model):
        raise ForgeError(f"{model}: neither a GGUF file nor a Hugging Face model directory")
    return read_gguf(model)


def _targets(model: Path, gguf: Path | None, source_dir: Path | None) -> tuple[Path, Path | None]:
    """The GGUF that FROM points at and the HF folder for generation_config.json / LICENSE (None: no folder)."""
    if model.is_dir():
        if gguf is None:
            raise ForgeError(f"{model} is a Hugging Face directory: name the GGUF the Modelfile's FROM points at "
                             "with --gguf PATH")
        source_dir = source_dir or model
    else:
        gguf = gguf or model
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ForgeError(f"--gguf {gguf}: no such file (Ollama would treat a missing FROM path as a registry name)")
    if source_dir is not None and not Path(source_dir).is_dir():
        raise ForgeError(f"--source {source_dir}: not a directory")
    return gguf, Path(source_dir) if source_dir else None


def _tool_template(info: ModelInfo, source_dir: Path | None) -> str | None:
    """The model's separate tool_use template: the GGUF's / folder's own, else (a GGUF whose converter kept only the
    default one) the HF folder's when that folder's default template is the GGUF's."""
    if info.tool_template or source_dir is None or not (source_dir / "tokenizer_config.json").is_file():
        return info.tool_template
    folder = read_hf_dir(source_dir)
    return folder.tool_template if folder.template == info.template else None


def _jinja_source(model: Path, template: str | None, info: ModelInfo) -> str:
    """The Jinja template to translate: ``template`` (see :func:`gguf_forge.chat_template.load`), else the model's."""
    source = chat_template.resolve(template, info.template)
    if source is None:
        raise ForgeError(f"{model}: has no chat template; give one with --template NAME|FILE.jinja "
                         f"(named templates: {', '.join(chat_template.named_templates())})")
    return source


def _license(source_dir: Path | None, license_name: str | None) -> tuple[str | None, list[str]]:
    """The LICENSE text (the folder's LICENSE file, else the GGUF's general.license) and what was changed in it."""
    lic = license_text(source_dir)
    warnings: list[str] = []
    if lic is not None and not all(ch.isprintable() or ch in "\n\t\r" for ch in lic):
        lic = "".join(ch for ch in lic if ch.isprintable() or ch in "\n\t\r")
        warnings.append("LICENSE: invisible characters removed (Ollama's Modelfile parser drops them)")
    if lic is not None and '"""' in lic:
        lic = lic.replace('"""', "'''")
        warnings.append('LICENSE: """ replaced by \'\'\' (a Modelfile cannot hold three double quotes in a row)')
    if lic is None and license_name:
        lic = str(license_name)
    return lic, warnings


def _writable_folder(outdir: Path) -> None:
    if not outdir.exists():
        outdir.mkdir(parents=True)
    if not outdir.is_dir() or not os.access(outdir, os.W_OK):
        raise ForgeError(f"-o {outdir}: not a writable folder")


def _from_path(gguf: Path, outdir: Path) -> str:
    """FROM's value: ``gguf`` relative to the Modelfile's folder (``./x.gguf``), or absolute on another drive."""
    rel = os.path.relpath(gguf.resolve(), outdir.resolve())
    return rel if rel.startswith("..") or os.path.isabs(rel) else f"./{rel}"


def _notes(tr: Translation, system: str | None) -> list[str]:
    """The Modelfile's ``# note:`` comments."""
    notes = list(tr.notes)
    if tr.trims:
        notes.append("the original chat template trims whitespace around message contents; Go templates cannot, "
                     "so contents are used as sent")
    if tr.system is not None and system is None:
        notes.append("SYSTEM is the chat template's own default system prompt")
    return notes


def _yaml_text(data: dict[str, Any], name: str, slug: str, publisher: str) -> str:
    """``model.yaml`` with a header saying how LM Studio picks it up."""
    head = (f"# LM Studio model definition for {name}, written by gguf-forge (quantize modelfile).\n"
            f"# Import the GGUF: lms import <file>.gguf --user-repo {publisher}/{slug}-GGUF\n"
            f"# LM Studio reads model.yaml files beside its models (~/.lmstudio/models/{publisher}/{slug}/) and from "
            "the LM Studio Hub (lms push)\n")
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_modelfile(model: Path, outdir: Path, *, gguf: Path | None = None, source_dir: Path | None = None,
                    template: str | None = None, system: str | None = None, ctx: int | None = None,
                    name: str | None = None, lmstudio_legacy: bool = False,
                    filename: str = "Modelfile", publisher: str = "local",
                    require_tools: bool = False) -> ModelfileResult:
    """Write an Ollama Modelfile and an LM Studio preset that reproduce ``model``'s chat template exactly.

    ``model`` is a GGUF (template and special tokens from its metadata) or a Hugging Face directory (then ``gguf``
    names the file FROM points at). ``source_dir``: a HF folder for generation_config.json and LICENSE when
    ``model`` is a GGUF. ``template``: a named template, a ``.jinja`` path or Jinja source that replaces the
    model's. Raises :class:`ForgeError` (and writes nothing) when the template cannot be reproduced exactly.
    """
    model, outdir = Path(model), Path(outdir)
    info = _read_model(model)
    gguf, source = _targets(model, gguf, source_dir)
    jinja_src = _jinja_source(model, template, info)
    if ctx is not None and ctx < 1:
        raise ForgeError(f"--ctx {ctx}: must be a positive number of tokens")

    # Ollama adds BOS itself only when the GGUF says so; otherwise a BOS the template writes stays in TEMPLATE
    # (SmolLM2's bos_token is <|im_start|>, which its template writes first and its GGUF does not add)
    tr = translate(jinja_src, bos=info.bos, eos=info.eos, system=system, extra_stop_tokens=info.end_tokens,
                   strip_bos=info.add_bos is not False, require_tools=require_tools,
                   tool_template=None if template else _tool_template(info, source))
    name = name or info.name or model.stem
    slug = _slug(name)
    num_ctx = ctx or min(info.context_length or 4096, DEFAULT_CTX_CAP)
    sampling = sampling_defaults(source)
    lic, license_warnings = _license(source, info.license_name)
    warnings = [*tr.warnings, *license_warnings]

    manual = tr.manual
    if lmstudio_legacy:
        legacy_preset(name=name, system=tr.system, manual=manual, stops=tr.stops, sampling={}, ctx=num_ctx)  # checks
    _writable_folder(outdir)
    text = modelfile_text(name=slug, from_path=_from_path(gguf, outdir), template=tr.go_template, system=tr.system,
                          stops=tr.stops, parameters={"num_ctx": num_ctx, **sampling}, license=lic,
                          notes=_notes(tr, system))
    lm = preset(name=name, identifier=f"@local:{slug}", system=tr.system, jinja=jinja_src, manual=manual,
                stops=tr.stops, sampling=sampling, ctx=num_ctx)
    thinking = "enable_thinking" in jinja_src
    definition = model_yaml(model=f"{publisher}/{slug}", key=f"{publisher}/{slug}-GGUF", preset_data=lm,
                            ctx=num_ctx, tools=tr.tools.startswith("exact"), thinking=thinking)
    out: dict[Path, str | bytes] = {outdir / filename: text, outdir / f"{slug}.preset.json": _json_text(lm),
                                    outdir / "model.yaml": _yaml_text(definition, name, slug, publisher)}
    legacy_path = None
    if lmstudio_legacy:
        legacy_path = outdir / f"{slug}.legacy.preset.json"
        out[legacy_path] = _json_text(legacy_preset(name=name, system=tr.system, manual=manual, stops=tr.stops,
                                                    sampling=sampling, ctx=num_ctx))
    files.write_files(out)
    return ModelfileResult(modelfile=outdir / filename, preset=outdir / f"{slug}.preset.json",
                           legacy_preset=legacy_path, stops=tr.stops, system=tr.system, warnings=warnings,
                           template=tr.go_template, num_ctx=num_ctx, manual=manual is not None,
                           model_yaml=outdir / "model.yaml", tools=tr.tools)


def ollama_create(name: str, modelfile: Path) -> str:
    """Run ``ollama create NAME -f Modelfile``; a clear error when the ollama binary is not on PATH."""
    exe = shutil.which("ollama")
    if exe is None:
        raise ForgeError(f"--ollama-create: the ollama binary is not on PATH; install Ollama, then run: "
                         f"ollama create {name} -f {modelfile}")
    r = subprocess.run([exe, "create", name, "-f", str(modelfile)], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ForgeError(f"ollama create {name} -f {modelfile} failed: {last[0]}")
    return (r.stdout or "").strip()
