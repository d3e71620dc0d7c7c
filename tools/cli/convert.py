"""``quantize convert``, ``quantize merge``, ``quantize inspect``: Hugging Face checkpoints in, GGUF (or a merged
checkpoint) out, and what a GGUF holds."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator

import click

from ...convert import (
    Checkpoint,
    NonFiniteError,
    arch_for_config,
    format_inspection,
    inspect_gguf,
    merged_source,
    parse_lora_spec,
    parse_override,
    resolve_model,
    write_hf_checkpoint,
)
from ...convert import convert as do_convert
from ...convert.config import F32_MAX
from ...errors import ForgeError
from ...files import format_size, parse_size, progress
from ...keys import LLM, ROPE, arch_key
from . import options as opt

#: ``--allow-nonfinite`` (convert, merge): keep NaN/infinite weights instead of refusing the checkpoint
ALLOW_NONFINITE = click.option(
    "--allow-nonfinite", is_flag=True,
    help="Write tensors holding NaN or infinite values instead of refusing them (a damaged checkpoint).")


@contextlib.contextmanager
def nonfinite_hint() -> Iterator[None]:
    """A tensor with NaN or infinity stops the command; the message says how to write it anyway."""
    try:
        yield
    except NonFiniteError as e:
        raise ForgeError(f"{e}; --allow-nonfinite writes it anyway") from None


@click.command()
@click.argument("model")
@click.option("-o", "--outfile", "outfile", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output GGUF file, e.g. Model-BF16.gguf.")
@click.option("--outtype", type=click.Choice(["auto", "f32", "f16", "bf16", "q8_0"], case_sensitive=False),
              default="auto", show_default=True, help="Tensor type; auto keeps bf16 for bf16 checkpoints, else f16.")
@opt.ctx("Override the context length stored in the GGUF.")
@click.option("--rope-theta", type=click.FloatRange(min=0, min_open=True), help="Override the rope frequency base.")
@click.option("--override-kv", "override_kv", multiple=True, metavar="KEY=TYPE:VALUE",
              help="Set a metadata key (TYPE: int, float, bool, str); repeatable.")
@opt.loras("PEFT LoRA adapter (directory or hub id) merged while converting; repeatable, applied in order.")
@click.option("--name", help="general.name to store (default: from the model card or folder).")
@ALLOW_NONFINITE
@opt.as_json()
@opt.no_progress()
def convert(model: str, outfile: Path, outtype: str, ctx: int | None, rope_theta: float | None,
            override_kv: tuple[str, ...], loras: tuple[str, ...], name: str | None, allow_nonfinite: bool,
            as_json: bool, no_progress: bool) -> None:
    """Convert a Hugging Face model (directory or cached hub id) to GGUF, streaming tensor by tensor.

    \b
    Examples:
      quantize convert ./Llama-3-8B-Instruct -o Llama-3-8B-Instruct-BF16.gguf
      quantize convert Qwen/Qwen2.5-0.5B-Instruct -o qwen-F16.gguf --outtype f16
      quantize convert ./model -o model-Q8_0.gguf --outtype q8_0 --ctx 32768 --rope-theta 1000000
      quantize convert ./Meta-Llama-3-8B-Instruct --lora ./my-lora -o my-finetune-BF16.gguf
      quantize convert ./base --lora ./style:0.7 --lora ./facts:0.5 -o mix-F16.gguf --outtype f16
    """
    if rope_theta is not None and not (math.isfinite(rope_theta) and rope_theta <= F32_MAX):
        raise ForgeError(f"--rope-theta {rope_theta}: must be a finite number a float32 holds (at most {F32_MAX:.4g})")
    path = resolve_model(model)
    with opt.option("--override-kv"):
        overrides = [parse_override(o) for o in override_kv]
    if ctx is not None or rope_theta is not None:
        arch = arch_for_config(Checkpoint(path).config).arch_name
        extra = []
        if ctx is not None:
            extra.append(parse_override(f"{arch_key(LLM.CONTEXT_LENGTH, arch)}=int:{ctx}"))
        if rope_theta is not None:
            extra.append(parse_override(f"{arch_key(ROPE.FREQ_BASE, arch)}=float:{rope_theta}"))
        overrides = extra + overrides
    with opt.option("--lora"):
        specs = [parse_lora_spec(x) for x in loras]
    with nonfinite_hint():
        result = do_convert(path, outfile, outtype=outtype, overrides=overrides, progress=not no_progress, name=name,
                            loras=specs, allow_nonfinite=allow_nonfinite)
    opt.warn(result.warnings)
    if as_json:
        opt.echo_json({
            "output": str(result.path), "architecture": result.arch, "outtype": result.outtype,
            "tensors": result.n_tensors, "parameters": result.n_params, "bytes": result.nbytes,
            "pre_tokenizer": result.pre_tokenizer,
        })
    else:
        click.echo(f"wrote {result.path} ({result.arch}, {result.outtype}, {result.n_tensors} tensors, "
                   f"{result.n_params / 1e6:.1f}M parameters, {format_size(result.nbytes)})")


@click.command()
@click.option("--base", "base", required=True, help="Base model: Hugging Face directory or cached hub id.")
@opt.loras("PEFT LoRA adapter (directory or hub id); repeatable, applied in order.", required=True)
@opt.outdir("Output folder for the merged Hugging Face checkpoint (must not exist or be empty).", required=True)
@click.option("--dtype", type=click.Choice(["auto", "f32", "f16", "bf16"], case_sensitive=False), default="auto",
              show_default=True, help="Weight dtype; auto keeps the base's.")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="Largest safetensors shard, e.g. 2GB, 500MB (GB: 10^9 bytes, GiB: 2^30).")
@ALLOW_NONFINITE
@opt.as_json()
@opt.no_progress()
def merge(base: str, loras: tuple[str, ...], outdir: Path, dtype: str, max_shard_size: str, allow_nonfinite: bool,
          as_json: bool, no_progress: bool) -> None:
    """Merge LoRA adapters into the base and write a sharded safetensors checkpoint (streaming, low memory).

    \b
    Example:
      quantize merge --base ./Meta-Llama-3-8B-Instruct --lora ./my-lora -o ./my-finetune-merged
    """
    try:
        limit = parse_size(max_shard_size)
    except ValueError as e:
        raise ForgeError(f"--max-shard-size {e}") from None
    base_dir = resolve_model(base, what="--base")
    with opt.option("--lora"):
        specs = [parse_lora_spec(x) for x in loras]
    source = merged_source(Checkpoint(base_dir), specs)
    opt.warn(source.warnings)
    n_weights = sum(math.prod(source.tensors[n].shape) for n in source.names())
    with nonfinite_hint(), progress(n_weights, f"writing {outdir.name}", enabled=not no_progress,
                                    unit="weights") as bar:
        files = write_hf_checkpoint(source, outdir, dtype=dtype.lower(), max_shard_bytes=limit,
                                    progress=lambda n: n is not None and bar.update(n), allow_nonfinite=allow_nonfinite)
    if as_json:
        opt.echo_json({"output": str(outdir), "files": [str(f) for f in files]})
    else:
        click.echo(f"wrote {outdir} ({len(files)} safetensors file{'s' if len(files) != 1 else ''})")


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@opt.as_json("Print everything as JSON.")
def inspect(file: Path, as_json: bool) -> None:
    """Show what a GGUF holds: architecture, parameters, tensor types, context, rope, tokenizer, template.

    \b
    Example:
      quantize inspect SmolLM2-135M-Instruct-Q8_0.gguf --json
    """
    info = inspect_gguf(file)
    if as_json:
        opt.echo_json(info)
    else:
        click.echo(format_inspection(info))
