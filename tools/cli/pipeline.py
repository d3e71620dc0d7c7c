"""``quantize merge-convert`` (the main job) and ``quantize demo``."""

from __future__ import annotations

from pathlib import Path

import click

from ...errors import ForgeError
from ...files import format_size
from ...quant import parse_types
from ...quant.placement import check_devices
from ...quant.placement import resolve as resolve_placement
from ..pipeline import PipelineConfig, run_demo, run_pipeline
from . import options as opt
from .convert import ALLOW_NONFINITE, nonfinite_hint
from .serve import start as start_server


@click.command(name="merge-convert")
@click.option("--base", required=True, help="Base model: Hugging Face directory or cached hub id.")
@opt.loras("PEFT LoRA adapter merged while converting; repeatable, applied in order.")
@opt.outdir("Output folder (created; re-running into it resumes and skips finished steps).", required=True)
@click.option("--quant", "quants", default="Q4_K_M", show_default=True,
              help="Comma-separated llama.cpp types; the first is the Modelfile's default.")
@click.option("--imatrix", "imatrix", metavar="CALIBRATION|default",
              help="Compute an importance matrix on the merged model from this text/JSONL file (or 'default').")
@click.option("--imatrix-quant", "imatrix_quants",
              help="Types to make with the imatrix (named <TYPE>-im); default: the --quant types below Q8_0.")
@opt.chunks("Use at most this many calibration chunks.", name="--imatrix-chunks")
@click.option("--imatrix-engine", type=click.Choice(["llama", "torch"]),
              help="llama (default): llama.cpp on the intermediate GGUF, memory-mapped (a few GB for an 8B); "
                   "torch: the model in transformers (float32: ~4 bytes per parameter), whole on the CPU or placed "
                   "by the options below (default with any of them).")
@opt.placement("--imatrix-engine torch")
@opt.template("Chat template written into the GGUFs, the Modelfile and the preset, instead of the model's own")
@opt.system("Default system prompt for the Modelfile and preset.")
@opt.ctx("Context length stored in the GGUF and num_ctx.")
@click.option("--smoke", is_flag=True, help="Run the smoke suite on every quant (results in manifest.json).")
@click.option("--eval", "eval_text", type=click.Path(dir_okay=False, path_type=Path),
              help="Held-out text: perplexity and KL divergence of every quant (in the model card).")
@opt.chunks("Use at most this many evaluation chunks.", name="--eval-chunks")
@click.option("--name", help="Basename of the outputs (default: the adapter's or the base's folder name).")
@click.option("--outtype", type=click.Choice(["bf16", "f16", "f32", "auto"], case_sensitive=False), default="bf16",
              show_default=True, help="Type of the intermediate GGUF the quants are made from.")
@click.option("--keep-intermediate", is_flag=True, help="Keep the BF16/F16 GGUF in the folder.")
@ALLOW_NONFINITE
@opt.threads()
@click.option("--serve", "serve_after", is_flag=True,
              help="At the end, serve the folder's GGUFs (OpenAI API and web chat at http://127.0.0.1:8000/, as "
                   "`quantize serve OUTDIR`) until Ctrl-C.")
@opt.as_json("Print the manifest as JSON.")
@opt.no_progress("Hide progress bars.")
def merge_convert(base: str, loras: tuple[str, ...], outdir: Path, quants: str, imatrix: str | None,
                  imatrix_quants: str | None, imatrix_chunks: int | None, imatrix_engine: str | None,
                  device_map: str | None, max_memory: str | None, offload_folder: Path | None,
                  template: str | None, system: str | None,
                  ctx: int | None, smoke: bool, eval_text: Path | None, eval_chunks: int | None, name: str | None,
                  outtype: str, keep_intermediate: bool, allow_nonfinite: bool, threads: int | None, as_json: bool,
                  no_progress: bool, serve_after: bool) -> None:
    """The main job: merge LoRA adapters, convert, (imatrix,) quantize, write Modelfile, preset, card, manifest.

    \b
    Examples:
      quantize merge-convert --base ./Meta-Llama-3-8B-Instruct --lora ./my-lora -o out/ --quant Q4_K_M,Q8_0
      quantize merge-convert --base ./base --lora ./my-lora -o out/ --imatrix my-chats.jsonl --smoke
      quantize merge-convert --base Qwen/Qwen2.5-0.5B-Instruct -o out/ --quant Q4_K_M --eval held-out.txt
      quantize merge-convert --base ./base --lora ./my-lora -o out/ --serve   # then chat at http://127.0.0.1:8000/
      quantize merge-convert --base ./Llama-3-70B -o out/ --imatrix default --max-memory 0=70GiB,cpu=90GiB
    """
    imatrix_engine = _imatrix_engine(imatrix, imatrix_engine, device_map, max_memory, offload_folder)
    with opt.option("--quant"):
        quant_types = parse_types(quants)
    with opt.option("--imatrix-quant"):
        im_types = parse_types(imatrix_quants) if imatrix_quants else None
    cfg = PipelineConfig(
        base=base, loras=list(loras), outdir=outdir, quants=quant_types, imatrix=imatrix, imatrix_quants=im_types,
        imatrix_chunks=imatrix_chunks, imatrix_engine=imatrix_engine, template=template, system=system, ctx=ctx,
        imatrix_device_map=device_map, imatrix_max_memory=max_memory, imatrix_offload_folder=offload_folder,
        smoke=smoke, eval_text=eval_text,
        eval_chunks=eval_chunks, name=name, outtype=outtype, keep_intermediate=keep_intermediate,
        allow_nonfinite=allow_nonfinite, threads=threads,
        progress=not no_progress,
    )
    with nonfinite_hint():
        result = run_pipeline(cfg, log=opt.note if as_json else click.echo)
    if as_json:
        opt.echo_json(result.manifest)
    else:
        click.echo(f"\n{result.outdir}/ ({len(result.ran)} steps run, {len(result.skipped)} unchanged and skipped)")
        for o in result.manifest["outputs"]:
            click.echo(f"  {o['file']:<44} {format_size(o['bytes']):>12}  {o['kind']}")
        click.echo(f"ollama create {result.name.lower()} -f {result.outdir / 'Modelfile'}")
    if cfg.smoke and not result.passed:
        failed = [f for f, r in (result.manifest.get("smoke") or {}).items() if not r.get("passed")]
        opt.fail(f"smoke test failed for {', '.join(failed)} (see manifest.json)")
    if serve_after:
        start_server([result.outdir], threads=threads)


def _imatrix_engine(imatrix: str | None, engine: str | None, device_map: str | None, max_memory: str | None,
                    offload_folder: Path | None) -> str:
    """The imatrix engine: ``llama`` unless asked, ``torch`` when a placement option is given; the placement
    options checked before any work (they need --imatrix and the torch engine; their values are valid)."""
    asked = [k for k, v in {"--device-map": device_map, "--max-memory": max_memory,
                            "--offload-folder": offload_folder}.items() if v is not None]
    if not asked:
        return engine or "llama"
    if not imatrix:
        raise ForgeError(f"{asked[0]}: places the torch imatrix engine's model; it needs --imatrix")
    if engine == "llama":
        raise ForgeError(f"{asked[0]}: places the torch imatrix engine's model; --imatrix-engine llama memory-maps the "
                         "intermediate GGUF (use --imatrix-engine torch, or leave the option out)")
    check_devices(resolve_placement("cpu", device_map, max_memory, offload_folder), "cpu")  # a bad value: now
    return "torch"


@click.command()
@opt.outdir("Folder for the demo's files.", default=Path("demo-output"))
@opt.threads()
def demo(outdir: Path, threads: int | None) -> None:
    """Fine-tune the embedded SmolLM2 with a tiny identity LoRA, run the whole pipeline and chat with the result.

    \b
    Example:
      quantize demo -o demo-output
    """
    result = run_demo(outdir, log=click.echo, threads=threads)
    if not result.smoke_passed:
        opt.fail("the smoke test failed (see manifest.json)")
