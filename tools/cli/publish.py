"""``quantize publish``: the command line for :func:`gguf_forge.tools.publish.publish`."""

from __future__ import annotations

from pathlib import Path

import click

from ...errors import ForgeError
from ...files import parse_size
from ..publish import HUBS
from ..publish import publish as do_publish
from . import options as opt


@click.command()
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--repo", required=True, metavar="OWNER/NAME", help="Model repo to create (if needed) and upload to.")
@click.option("--hub", type=click.Choice(list(HUBS)), default="hf", show_default=True,
              help="; ".join(f"{name}: {hub.description}" for name, hub in HUBS.items()) + ".")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="Print the plan (files, sizes, target paths); touch nothing.")
@click.option("--max-file-size", "max_file_size", metavar="SIZE",
              help="Split GGUFs bigger than this into llama.cpp shards (default: the hub's limit, 50G; "
                   "K/M/G are powers of 1000, as in llama-gguf-split).")
@click.option("--allow-audit-mismatch", is_flag=True,
              help="Publish even when the end-of-turn audit (kept in manifest.json) found a mismatch that metadata "
                   "cannot fix (a model that ends its replies with another token than its template).")
@opt.as_json()
@opt.no_progress("Hide the progress bars.")
def publish(outdir: Path, repo: str, hub: str, private: bool, dry_run: bool, max_file_size: str | None,
            allow_audit_mismatch: bool, as_json: bool, no_progress: bool) -> None:
    """Upload a `quantize merge-convert` output folder (GGUFs, Modelfile, presets, manifest, model card).

    Every file is checked against manifest.json first (a folder without one is refused), and so is the end-of-turn
    audit the pipeline kept there: a mismatch metadata cannot fix stops the upload (--allow-audit-mismatch
    overrides); a manifest without an audit record gets the audit now (greedy replies of the default GGUF).
    GGUFs over the hub's per-file limit are split into llama.cpp shards (NAME-00001-of-0000N.gguf; llama.cpp
    loads them from the first). Files the hub already
    holds with the same content are skipped, so re-running an interrupted upload resumes it. The token comes
    from HF_TOKEN or `hf auth login` (ModelScope: MODELSCOPE_API_TOKEN) and is never printed.

    \b
    Examples:
      quantize publish ./MyModel-GGUF --repo my-user/MyModel-GGUF --dry-run
      quantize publish ./MyModel-GGUF --repo my-user/MyModel-GGUF --private
      quantize publish ./MyModel-GGUF --repo my-org/MyModel-GGUF --max-file-size 20G --json
    """
    try:
        max_bytes = parse_size(max_file_size) if max_file_size else None
    except ValueError as e:
        raise ForgeError(f"--max-file-size {e}") from None
    try:
        plan = do_publish(outdir, repo, hub=hub, private=private, dry_run=dry_run, max_file_bytes=max_bytes,
                          progress=not no_progress, allow_audit_mismatch=allow_audit_mismatch)
    except KeyboardInterrupt:
        opt.fail("interrupted: nothing was committed by this run; re-run the same command to resume "
                 "(files already uploaded are skipped)", 130)
    opt.warn(plan.warnings)
    if as_json:
        opt.echo_json(plan.to_dict())
    else:
        click.echo(plan.format())
