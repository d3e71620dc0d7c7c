"""``quantize audit``: every end-of-turn signal of a model in one table, mismatches with their fixes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ...modelfiles import audit as audit_lib
from ..pipeline.manifest import refresh_after_fix
from . import options as opt

#: the file each kind of fix rewrites (audit.Audit.paths key)
_REWRITES = {"gguf_eot": "gguf", "modelfile": "modelfile", "modelfile_extra": "modelfile", "preset": "preset"}


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--fix", "do_fix", is_flag=True, help="Write what is missing (generation_config eos, the GGUF's eot id, "
              "Modelfile / preset stops); exit 1 when something cannot be fixed.")
@click.option("--no-generate", is_flag=True, help="Skip the greedy replies (no model load).")
@opt.as_json()
def audit(target: Path, do_fix: bool, no_generate: bool, as_json: bool) -> None:
    """Audit the end-of-turn signals of MODEL (Hugging Face folder), a GGUF, or an output folder.

    One table: tokenizer_config eos, generation_config eos list, the GGUF's eos/eot/eom, the marker that closes an
    assistant turn in the chat template, Modelfile and LM Studio preset stops and, with a GGUF, the token the model
    ends its greedy replies with. Exit 1 when a mismatch is left. --fix in a `quantize merge-convert` output
    folder also updates its manifest.json (sha256 of the rewritten files, the audit record) and model card, so
    `quantize publish` takes the fixed folder.

    \b
    Examples:
      quantize audit out/My-Chat
      quantize audit out/My-Chat/My-Chat-Q4_K_M.gguf --json
      quantize audit ./My-Chat --fix
    """
    result = audit_lib.audit(target, generate=not no_generate)
    fixed: list[str] = []
    left = result.mismatches
    if do_fix:
        fixed, left = audit_lib.fix(result)
        done = [m for m in result.mismatches if m not in left]
        rewritten = {result.paths[_REWRITES[m.kind]] for m in done if m.kind in _REWRITES}
        folder = target if target.is_dir() else target.parent
        manifest = refresh_after_fix(folder, rewritten, [m.problem for m in done], fixed) if done else None
        if manifest is not None:
            fixed.append(f"{manifest}: new sha256 of the rewritten files, fixed mismatches out of the audit record "
                         "(the folder stays publishable)")
    if as_json:
        opt.echo_json({**result.as_dict(), "fixed": fixed,
                       "left": [{"problem": m.problem, "fix": m.fix} for m in left]})
    else:
        click.echo(audit_lib.table(result))
        for f in fixed:
            click.echo(f"fixed: {f}")
    if left:
        sys.exit(1)
