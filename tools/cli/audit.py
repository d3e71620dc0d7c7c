"""``quantize audit``: every end-of-turn signal of a model in one table, mismatches with their fixes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ...modelfiles import audit as audit_lib
from . import options as opt


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
    ends its greedy replies with. Exit 1 when a mismatch is left.

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
    if as_json:
        opt.echo_json({**result.as_dict(), "fixed": fixed,
                       "left": [{"problem": m.problem, "fix": m.fix} for m in left]})
    else:
        click.echo(audit_lib.table(result))
        for f in fixed:
            click.echo(f"fixed: {f}")
    if left:
        sys.exit(1)
