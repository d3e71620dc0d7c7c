"""``quantize modelfile``: Ollama Modelfile + LM Studio preset that reproduce the model's chat template."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from ...errors import ForgeError
from ...modelfiles import ollama_create, write_modelfile
from . import options as opt


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default: the GGUF's folder, so FROM is ./<file>.gguf).")
@click.option("--gguf", type=click.Path(dir_okay=False, path_type=Path),
              help="The GGUF that FROM points at, when MODEL is a Hugging Face directory.")
@click.option("--source", "source_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Hugging Face folder for generation_config.json and LICENSE, when MODEL is a GGUF.")
@opt.template("Use this chat template instead of the model's")
@opt.system("System prompt (SYSTEM line, LM Studio system prompt); default: the template's own.")
@opt.ctx("num_ctx / context length (default: the model's, at most 8192).")
@click.option("--name", help="Model name for the preset file and the messages (default: general.name).")
@click.option("--lmstudio-legacy", is_flag=True, help="Also write the legacy LM Studio config format.")
@click.option("--ollama-create", "ollama_name", metavar="NAME", help="Then run: ollama create NAME -f Modelfile.")
@click.option("--require-tools", is_flag=True, help="Exit 2 (nothing written) when the template's tools or thinking "
              "cannot be reproduced exactly, instead of writing a TEMPLATE without them.")
@opt.as_json()
def modelfile(model: Path, outdir: Path | None, gguf: Path | None, source_dir: Path | None, template: str | None,
              system: str | None, ctx: int | None, name: str | None, lmstudio_legacy: bool, ollama_name: str | None,
              require_tools: bool, as_json: bool) -> None:
    """Write an Ollama Modelfile and an LM Studio preset whose template renders exactly what the model's does.

    The Jinja chat template is translated to a Go template and both are rendered on a conversation suite
    before anything is written; a template that cannot be reproduced exactly is an error (exit 2).

    \b
    Examples:
      quantize modelfile My-Chat-Q4_K_M.gguf
      quantize modelfile My-Chat-Q4_K_M.gguf --source ./My-Chat --ollama-create my-chat
      quantize modelfile ./My-Chat --gguf out/My-Chat-Q4_K_M.gguf -o out --ctx 8192
      quantize modelfile model.gguf --template firefly-llama3 --system "你是一个乐于助人的助手。"
    """
    if ollama_name:
        if shutil.which("ollama") is None:
            raise ForgeError("--ollama-create: the ollama binary is not on PATH (install Ollama from ollama.com); "
                             "nothing written. Run without --ollama-create to write the Modelfile only")
    if outdir is None:
        outdir = (gguf or model).parent if (gguf or not model.is_dir()) else Path(".")
    result = write_modelfile(model, outdir, gguf=gguf, source_dir=source_dir,
                             template=opt.template_source(template), system=system,
                             ctx=ctx, name=name, lmstudio_legacy=lmstudio_legacy, require_tools=require_tools)
    opt.warn(result.warnings)
    created = ollama_create(ollama_name, result.modelfile) if ollama_name else None
    if as_json:
        opt.echo_json({
            "modelfile": str(result.modelfile), "preset": str(result.preset),
            "legacy_preset": str(result.legacy_preset) if result.legacy_preset else None, "stops": result.stops,
            "model_yaml": str(result.model_yaml) if result.model_yaml else None, "tools": result.tools,
            "system": result.system, "num_ctx": result.num_ctx, "lmstudio_manual": result.manual,
            "warnings": result.warnings, "ollama_created": ollama_name if created is not None else None,
        })
        return
    click.echo(f"wrote {result.modelfile} (stops: {', '.join(result.stops)}; num_ctx {result.num_ctx})")
    click.echo(f"wrote {result.preset} (LM Studio preset{', with manual prefix/suffix form' if result.manual else ''})")
    if result.legacy_preset:
        click.echo(f"wrote {result.legacy_preset} (legacy LM Studio config)")
    if ollama_name:
        click.echo(f"created Ollama model {ollama_name}")
