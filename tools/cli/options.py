"""Options the commands share, declared once: the same name, range, default and help text everywhere."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from ... import chat_template
from ...errors import ForgeError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

#: the largest context any command accepts (llama.cpp stores it as a 32-bit count)
MAX_CTX = 2**31 - 1
#: the most threads any command accepts (llama.cpp's GGML_MAX_N_THREADS; more crashes it)
MAX_THREADS = 512


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange, refusing ``nan`` and ``inf`` as well (NaN passes every range comparison)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number.", param, ctx)
        return rv


def as_json(help: str = "Print the result as JSON.") -> Decorator:
    """``--json``: machine-readable output on stdout (parameter ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def no_progress(help: str = "Hide the progress bar.") -> Decorator:
    """``--no-progress``."""
    return click.option("--no-progress", is_flag=True, help=help)


def threads(help: str = "CPU threads (default: all cores).") -> Decorator:
    """``--threads N`` (1 to :data:`MAX_THREADS`; None means the command's default)."""
    return click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), help=help)


def ctx(help: str, *, default: int | None = None, min: int = 1) -> Decorator:
    """``--ctx N``: a context length in tokens, ``min`` to :data:`MAX_CTX`."""
    return click.option("--ctx", type=click.IntRange(min=min, max=MAX_CTX), default=default,
                        show_default=default is not None, help=help)


def chunks(help: str = "Use at most this many chunks.", name: str = "--chunks") -> Decorator:
    """``--chunks N`` (or another name such as ``--imatrix-chunks``)."""
    return click.option(name, type=click.IntRange(min=1), help=help)


def placement(what: str = "torch engine") -> Decorator:
    """``--device-map``, ``--max-memory``, ``--offload-folder``: where the torch imatrix engine places the model
    (transformers' and accelerate's big-model placement, :mod:`gguf_forge.quant.placement`); ``what`` names the
    engine in the help (parameters ``device_map``, ``max_memory``, ``offload_folder``)."""
    options = [
        click.option("--device-map", metavar="auto|balanced|sequential|cpu|cuda:N",
                     help=f"{what}: accelerate's placement, as transformers' device_map (default auto with --device "
                          "cuda): fills the GPUs, then the CPU, then the disk; or one device for the whole model."),
        click.option("--max-memory", metavar="0=20GiB,1=20GiB,cpu=30GiB",
                     help=f"{what}: memory budget per device for the placement (GPU index or cuda:N, cpu); what "
                          "does not fit is offloaded to the disk. Implies --device-map auto."),
        click.option("--offload-folder", type=click.Path(path_type=Path),
                     help=f"{what}: where weights offloaded to the disk are re-saved when needed (a temporary "
                          "folder inside it, removed after; default: beside the output)."),
    ]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def template(help: str | None = None) -> Decorator:
    """``--template NAME|FILE``: a named chat template or a ``.jinja`` file, listing the shipped names."""
    text = help or "Chat template instead of the model's own"
    names = ", ".join(chat_template.named_templates())
    return click.option("--template", metavar="NAME|FILE",
                        help=f"{text}: a named one ({names}) or a .jinja file.")


def system(help: str = "System prompt (default: the template's own, if any).") -> Decorator:
    """``--system TEXT``."""
    return click.option("--system", help=help)


def loras(help: str, *, required: bool = False) -> Decorator:
    """``--lora ADAPTER[:WEIGHT]``, repeatable (parameter ``loras``)."""
    return click.option("--lora", "loras", multiple=True, required=required, metavar="ADAPTER[:WEIGHT]", help=help)


def outdir(help: str, *, required: bool = False, default: Path | None = None) -> Decorator:
    """``-o/--outdir FOLDER``."""
    return click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path), required=required,
                        default=default, show_default=default is not None, help=help)


def markdown(help: str = "Print the table as markdown (for a model card).") -> Decorator:
    """``--markdown``."""
    return click.option("--markdown", is_flag=True, help=help)


@contextlib.contextmanager
def option(name: str) -> Iterator[None]:
    """Errors raised by the library inside the block are about the value of option ``name``: say so."""
    try:
        yield
    except ForgeError as e:
        raise e.from_option(name) from None


def template_source(spec: str | None) -> str | None:
    """``--template NAME|FILE`` -> Jinja source, resolved once here (errors name the option); None stays None."""
    if spec is None:
        return None
    with option("--template"):
        return chat_template.load(spec)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (non-ASCII text kept as it is)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def warn(messages: list[str]) -> None:
    """Print each warning on stderr as ``warning: ...``."""
    for w in messages:
        click.echo(f"warning: {w}", err=True)


def note(text: str) -> None:
    """A notice on stderr (stdout stays the command's result)."""
    click.echo(text, err=True)


def fail(message: str, code: int = 1) -> None:
    """Say why on stderr and exit with ``code`` (1: a check failed; user errors raise ForgeError instead)."""
    click.echo(message, err=True)
    sys.exit(code)
