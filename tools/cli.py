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
    Examples:
      quantize merge-convert --base ./Meta-Llama-3-8B-Instruct --lora ./my-lora -o out/ --quant Q4_K_M
      quantize convert ./my-model -o my-model-F16.gguf --outtype f16
      quantize smoke out/my-lora-Q4_K_M.gguf
      quantize demo
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
@click.argument("infile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--type", "types", required=True, help="Comma-separated llama.cpp types, e.g. Q4_K_M,Q5_K_M,Q8_0.")
@click.option("--imatrix", type=click.Path(dir_okay=False, path_type=Path), help="Importance matrix (GGUF or .dat).")
@click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default: beside the input).")
@click.option("--output-tensor-type", help="Type for output.weight, e.g. q8_0.")
@click.option("--token-embedding-type", help="Type for token_embd.weight, e.g. q8_0.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=TYPE", help="Per-tensor type override; repeatable.")
@click.option("--pure", is_flag=True, help="Use the main type for every tensor (no mixes).")
@click.option("--allow-requantize", is_flag=True, help="Allow an already quantized input (quality suffers).")
@click.option("--threads", type=click.IntRange(min=1), help="Quantizer threads (default: all cores).")
@click.option("--force", is_flag=True, help="Redo outputs that already exist with the same recipe.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_user_errors
def quant(infile: Path, types: str, imatrix: Path | None, outdir: Path | None, output_tensor_type: str | None,
          token_embedding_type: str | None, tensor_types: tuple[str, ...], pure: bool, allow_requantize: bool,
          threads: int | None, force: bool, as_json: bool) -> None:
    """Quantize a GGUF with llama.cpp's own quantizer (in-process), one or several types at once.

    \b
    Examples:
      quantize quant Model-BF16.gguf --type Q4_K_M,Q5_K_M,Q8_0
      quantize quant Model-BF16.gguf --type Q4_K_M,IQ4_XS --imatrix imatrix.gguf -o out/
      quantize quant Model-F16.gguf --type Q4_K_M --tensor-type 'attn_v=q6_k' --output-tensor-type q8_0
    """
    from ..quant import parse_types, quantize as do_quantize

    results = do_quantize(infile, parse_types(types), outdir, imatrix=imatrix, threads=threads,
                          output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                          tensor_types=list(tensor_types), pure=pure, allow_requantize=allow_requantize, force=force)
    if as_json:
        click.echo(json.dumps([{"type": r.type, "output": str(r.path), "bytes": r.bytes, "skipped": r.skipped,
                                "imatrix": r.imatrix} for r in results], indent=2))
        return
    for r in results:
        what = "kept (same recipe; --force redoes it)" if r.skipped else "wrote"
        click.echo(f"{what} {r.path} ({r.bytes / 2**20:.1f} MiB)")


@main.command()
@click.argument("model")
@click.option("--calibration", default="default", show_default=True,
              help="Text file, JSONL chats (OpenAI messages or ShareGPT conversations), or 'default'.")
@click.option("-o", "--outfile", type=click.Path(dir_okay=False, path_type=Path), default=Path("imatrix.gguf"),
              show_default=True, help="Output: GGUF imatrix, or llama.cpp's legacy format when it ends in .dat.")
@click.option("--ctx", type=click.IntRange(min=8), default=512, show_default=True, help="Tokens per chunk.")
@click.option("--chunks", type=click.IntRange(min=1), help="Use at most this many chunks.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--lora", "loras", multiple=True, metavar="ADAPTER[:WEIGHT]", help="Merge these adapters first; repeatable.")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads on the CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print run statistics as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_user_errors
def imatrix(model: str, calibration: str, outfile: Path, ctx: int, chunks: int | None, device: str,
            loras: tuple[str, ...], threads: int | None, as_json: bool, no_progress: bool) -> None:
    """Compute an importance matrix on the (fine-tuned) Hugging Face model, the statistic llama-imatrix collects.

    \b
    Examples:
      quantize imatrix ./my-finetune --calibration my-chats.jsonl -o imatrix.gguf
      quantize imatrix ./Meta-Llama-3-8B-Instruct --lora ./my-lora --device cuda -o imatrix.gguf
    """
    from ..convert import parse_lora_spec, resolve_model
    from ..quant import compute_imatrix, write_gguf, write_legacy

    folder = outfile.parent if str(outfile.parent) else Path(".")
    if not folder.is_dir() or not __import__("os").access(folder, __import__("os").W_OK):
        raise ForgeError(f"-o {outfile}: folder {folder} does not exist or is not writable")
    im, stats = compute_imatrix(resolve_model(model), calibration=calibration, ctx=ctx, chunks=chunks, device=device,
                                loras=[parse_lora_spec(x) for x in loras], progress=not no_progress, threads=threads)
    (write_legacy if outfile.suffix == ".dat" else write_gguf)(im, outfile)
    stats["output"] = str(outfile)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        click.echo(f"wrote {outfile}: {stats['entries']} entries, {stats['chunks']} chunks x {ctx} tokens, "
                   f"{stats['tokens_per_s']:.0f} tokens/s on {device}")


@main.command(name="eval")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--text", "text_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluation text (use text the imatrix was not computed on).")
@click.option("--ctx", type=click.IntRange(min=16), default=512, show_default=True)
@click.option("--chunks", type=click.IntRange(min=1), help="Use at most this many chunks.")
@click.option("--threads", type=click.IntRange(min=1))
@click.option("--markdown", is_flag=True, help="Print the table as markdown (for a model card).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_user_errors
def evaluate_cmd(reference: Path, candidates: tuple[Path, ...], text_file: Path, ctx: int, chunks: int | None,
                 threads: int | None, markdown: bool, as_json: bool, no_progress: bool) -> None:
    """Perplexity of each file, and KL divergence / same-top-token rate of each candidate against the reference.

    \b
    Example:
      quantize eval Model-F16.gguf Model-Q4_K_M.gguf Model-Q4_K_M-im.gguf --text wiki.txt --chunks 20
    """
    from ..quant import evaluate

    if not text_file.is_file():
        raise ForgeError(f"--text {text_file}: no such file")
    report = evaluate(reference, list(candidates), text_file.read_text(encoding="utf-8"), ctx=ctx, chunks=chunks,
                      threads=threads, progress=not no_progress)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(report.table(markdown=markdown))


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


@main.command(name="merge-convert")
@click.option("--base", required=True, help="Base model: Hugging Face directory or cached hub id.")
@click.option("--lora", "loras", multiple=True, metavar="ADAPTER[:WEIGHT]",
              help="PEFT LoRA adapter merged while converting; repeatable, applied in order.")
@click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (created; re-running into it resumes and skips finished steps).")
@click.option("--quant", "quants", default="Q4_K_M", show_default=True,
              help="Comma-separated llama.cpp types; the first is the Modelfile's default.")
@click.option("--imatrix", "imatrix", metavar="CALIBRATION|default",
              help="Compute an importance matrix on the merged model from this text/JSONL file (or 'default').")
@click.option("--imatrix-quant", "imatrix_quants",
              help="Types to make with the imatrix (named <TYPE>-im); default: the --quant types below Q8_0.")
@click.option("--imatrix-chunks", type=click.IntRange(min=1), help="Use at most this many calibration chunks.")
@click.option("--template", help="Chat template: a named one (llama3, chatml, ...) or a .jinja file.")
@click.option("--system", help="Default system prompt for the Modelfile and preset.")
@click.option("--ctx", type=click.IntRange(min=1), help="Context length stored in the GGUF and num_ctx.")
@click.option("--smoke", is_flag=True, help="Run the smoke suite on every quant (results in manifest.json).")
@click.option("--eval", "eval_text", type=click.Path(dir_okay=False, path_type=Path),
              help="Held-out text: perplexity and KL divergence of every quant (in the model card).")
@click.option("--eval-chunks", type=click.IntRange(min=1), help="Use at most this many evaluation chunks.")
@click.option("--name", help="Basename of the outputs (default: the adapter's or the base's folder name).")
@click.option("--outtype", type=click.Choice(["bf16", "f16", "f32", "auto"], case_sensitive=False), default="bf16",
              show_default=True, help="Type of the intermediate GGUF the quants are made from.")
@click.option("--keep-intermediate", is_flag=True, help="Keep the BF16/F16 GGUF in the folder.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@_user_errors
def merge_convert(base: str, loras: tuple[str, ...], outdir: Path, quants: str, imatrix: str | None,
                  imatrix_quants: str | None, imatrix_chunks: int | None, template: str | None, system: str | None,
                  ctx: int | None, smoke: bool, eval_text: Path | None, eval_chunks: int | None, name: str | None,
                  outtype: str, keep_intermediate: bool, threads: int | None, as_json: bool, no_progress: bool) -> None:
    """The main job: merge LoRA adapters, convert, (imatrix,) quantize, write Modelfile, preset, card, manifest.

    \b
    Examples:
      quantize merge-convert --base ./Meta-Llama-3-8B-Instruct --lora ./my-lora -o out/ --quant Q4_K_M,Q8_0
      quantize merge-convert --base ./base --lora ./my-lora -o out/ --imatrix my-chats.jsonl --smoke
      quantize merge-convert --base Qwen/Qwen2.5-0.5B-Instruct -o out/ --quant Q4_K_M --eval held-out.txt
    """
    from .pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(
        base=base, loras=list(loras), outdir=outdir, quants=quants.split(","), imatrix=imatrix,
        imatrix_quants=imatrix_quants.split(",") if imatrix_quants else None, imatrix_chunks=imatrix_chunks,
        template=template, system=system, ctx=ctx, smoke=smoke, eval_text=eval_text, eval_chunks=eval_chunks,
        name=name, outtype=outtype, keep_intermediate=keep_intermediate, threads=threads, progress=not no_progress,
    )
    log = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    result = run_pipeline(cfg, log=log)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2, ensure_ascii=False))
    else:
        click.echo(f"\n{result.outdir}/ ({len(result.ran)} steps run, {len(result.skipped)} unchanged and skipped)")
        for o in result.manifest["outputs"]:
            click.echo(f"  {o['file']:<44} {o['bytes'] / 2**20:9.1f} MiB  {o['kind']}")
        click.echo(f"ollama create {result.name.lower()} -f {result.outdir / 'Modelfile'}")
    if cfg.smoke and not result.passed:
        failed = [f for f, r in (result.manifest.get("smoke") or {}).items() if not r.get("passed")]
        click.echo(f"smoke test failed for {', '.join(failed)} (see manifest.json)", err=True)
        sys.exit(1)


@main.command()
@click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              show_default=True, help="Folder for the demo's files.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
@_user_errors
def demo(outdir: Path, threads: int | None) -> None:
    """Fine-tune the embedded SmolLM2 with a tiny identity LoRA, run the whole pipeline and chat with the result.

    \b
    Example:
      quantize demo -o demo-output
    """
    from .demo import run_demo

    result = run_demo(outdir, log=click.echo, threads=threads)
    if not result.smoke_passed:
        click.echo("the smoke test failed (see manifest.json)", err=True)
        sys.exit(1)


from . import cli_publish  # noqa: E402,F401  (registers publish)
from . import cli_modelfile  # noqa: E402,F401  (registers modelfile)
from . import cli_chat  # noqa: E402,F401  (registers chat, smoke)

if __name__ == "__main__":  # pragma: no cover
    # `python -m gguf_forge.tools.cli`: the commands registered by the cli_* modules live on the group of the
    # imported module gguf_forge.tools.cli, not on this __main__ copy
    from gguf_forge.tools.cli import main as _registered_main

    _registered_main()
