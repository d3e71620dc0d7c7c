"""``quantize quant``, ``quantize imatrix``, ``quantize eval``: llama.cpp's quantizer, the importance matrix, and
the quality of the result."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ...convert import parse_lora_spec, resolve_model
from ...errors import ForgeError
from ...files import check_not_an_input, format_size, is_gguf, read_text_file
from ...quant import compute_imatrix, evaluate, parse_types, quantize, write_gguf, write_legacy
from ...quant.imatrix import ENGINES
from . import options as opt


@click.command()
@click.argument("infile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--type", "types", required=True, help="Comma-separated llama.cpp types, e.g. Q4_K_M,Q5_K_M,Q8_0.")
@click.option("--imatrix", type=click.Path(dir_okay=False, path_type=Path), help="Importance matrix (GGUF or .dat).")
@opt.outdir("Output folder (default: beside the input).")
@click.option("--output-tensor-type", help="Type for output.weight, e.g. q8_0.")
@click.option("--token-embedding-type", help="Type for token_embd.weight, e.g. q8_0.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=TYPE",
              help="Per-tensor type override; repeatable.")
@click.option("--pure", is_flag=True, help="Use the main type for every tensor (no mixes).")
@click.option("--allow-requantize", is_flag=True, help="Allow an already quantized input (quality suffers).")
@opt.threads("Quantizer threads (default: all cores).")
@click.option("--force", is_flag=True, help="Redo outputs that already exist with the same recipe.")
@opt.as_json()
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
    with opt.option("--type"):
        qtypes = parse_types(types)
    results = quantize(infile, qtypes, outdir, imatrix=imatrix, threads=threads,
                       output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                       tensor_types=list(tensor_types), pure=pure, allow_requantize=allow_requantize, force=force)
    if as_json:
        opt.echo_json([{"type": r.type, "output": str(r.path), "bytes": r.bytes, "skipped": r.skipped,
                        "imatrix": r.imatrix} for r in results])
        return
    for r in results:
        if r.skipped and r.path.resolve() == infile.resolve():
            click.echo(f"kept {r.path}: it already is {r.type} ({format_size(r.bytes)})")
            continue
        what = "kept (same recipe; --force redoes it)" if r.skipped else "wrote"
        click.echo(f"{what} {r.path} ({format_size(r.bytes)})")


@click.command()
@click.argument("model")
@click.option("--calibration", default="default", show_default=True,
              help="Text file, JSONL chats (OpenAI messages or ShareGPT conversations), or 'default'.")
@click.option("-o", "--outfile", type=click.Path(dir_okay=False, path_type=Path), default=Path("imatrix.gguf"),
              show_default=True, help="Output: GGUF imatrix, or llama.cpp's legacy format when it ends in .dat.")
@opt.ctx("Tokens per chunk.", default=512, min=8)
@opt.chunks()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--engine", type=click.Choice(list(ENGINES)),
              help="llama: llama.cpp on a memory-mapped GGUF (a few GB of memory for an 8B; default on the CPU); "
                   "torch: the model in transformers, whole on --device or placed by accelerate with --device-map "
                   "(default with --device cuda or a placement option).")
@opt.placement()
@opt.loras("Merge these adapters first; repeatable.")
@opt.threads("CPU threads (default: physical cores for llama, torch's default for torch).")
@opt.as_json("Print run statistics as JSON.")
@opt.no_progress()
def imatrix(model: str, calibration: str, outfile: Path, ctx: int, chunks: int | None, device: str,
            engine: str | None, device_map: str | None, max_memory: str | None, offload_folder: Path | None,
            loras: tuple[str, ...], threads: int | None, as_json: bool, no_progress: bool) -> None:
    """Compute an importance matrix on the (fine-tuned) model, the statistic llama-imatrix collects.

    MODEL is a Hugging Face folder (or hub id; --lora adapters are merged) or a GGUF. With the default llama
    engine a folder is first converted, streaming, to a temporary F16 GGUF beside the output (removed after).

    \b
    Examples:
      quantize imatrix ./my-finetune --calibration my-chats.jsonl -o imatrix.gguf
      quantize imatrix ./Meta-Llama-3-8B-Instruct --lora ./my-lora -o imatrix.gguf
      quantize imatrix out/My-Model-F16.gguf --chunks 100 -o imatrix.gguf
      quantize imatrix ./Meta-Llama-3-8B-Instruct --device cuda -o imatrix.gguf   (torch engine)
      quantize imatrix ./Llama-3-70B --device cuda --max-memory 0=70GiB,1=70GiB,cpu=100GiB --offload-folder /scratch
      quantize imatrix ./Meta-Llama-3-8B-Instruct --engine torch --max-memory cpu=4GiB   (CPU, rest from disk)
    """
    folder = outfile.parent if str(outfile.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ForgeError(f"-o {outfile}: folder {folder} does not exist or is not writable")
    with opt.option("--lora"):
        specs = [parse_lora_spec(x) for x in loras]
    model_path = Path(model).expanduser()
    model_dir = model_path if model_path.is_file() and is_gguf(model_path) else resolve_model(model)
    check_not_an_input(outfile, [model_dir, Path(calibration)])
    im, stats = compute_imatrix(model_dir, calibration=calibration, ctx=ctx, chunks=chunks, device=device,
                                loras=specs, progress=not no_progress, threads=threads, engine=engine,
                                work_dir=folder, log=lambda m: click.echo(m, err=True), device_map=device_map,
                                max_memory=max_memory, offload_folder=offload_folder)
    (write_legacy if outfile.suffix == ".dat" else write_gguf)(im, outfile)
    stats["output"] = str(outfile)
    if as_json:
        opt.echo_json(stats)
    else:
        click.echo(f"wrote {outfile}: {stats['entries']} entries, {stats['chunks']} chunks x {ctx} tokens, "
                   f"{stats['tokens_per_s']:.0f} tokens/s on {stats.get('device', device)} ({stats['engine']} engine)")


@click.command(name="eval")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--text", "text_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluation text (use text the imatrix was not computed on).")
@opt.ctx("Tokens per chunk.", default=512, min=16)
@opt.chunks()
@opt.threads()
@opt.markdown()
@opt.as_json("Print the figures as JSON.")
@opt.no_progress()
def evaluate_cmd(reference: Path, candidates: tuple[Path, ...], text_file: Path, ctx: int, chunks: int | None,
                 threads: int | None, markdown: bool, as_json: bool, no_progress: bool) -> None:
    """Perplexity of each file, and KL divergence / same-top-token rate of each candidate against the reference.

    \b
    Example:
      quantize eval Model-F16.gguf Model-Q4_K_M.gguf Model-Q4_K_M-im.gguf --text wiki.txt --chunks 20
    """
    text = read_text_file(text_file, f"--text {text_file}")
    report = evaluate(reference, list(candidates), text, ctx=ctx, chunks=chunks, threads=threads,
                      progress=not no_progress)
    if as_json:
        opt.echo_json(report.as_dict())
    else:
        click.echo(report.table(markdown=markdown))
