"""The ``quantize`` group: one error boundary for every command, and the explicit list of commands."""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
from typing import Any, NoReturn

import click

from ... import __version__
from ...errors import ForgeError
from ...runtime import quantizer_running

#: every command of ``quantize``: its name -> ``module:function`` in this package (tools/cli). A command's module
#: is imported only when that command runs (or ``quantize --help`` lists them all), so ``quantize imatrix`` does
#: not pay for the imports of ``serve``, ``pipeline``, ``publish``... A new command is added here.
COMMANDS: dict[str, str] = {
    "merge-convert": "pipeline:merge_convert", "convert": "convert:convert", "merge": "convert:merge",
    "quant": "quant:quant", "imatrix": "quant:imatrix", "eval": "quant:evaluate_cmd",
    "modelfile": "modelfile:modelfile", "chat": "chat:chat", "smoke": "chat:smoke", "inspect": "convert:inspect",
    "publish": "publish:publish", "demo": "pipeline:demo", "audit": "audit:audit", "serve": "serve:serve",
}

INTERRUPTED = "interrupted: partial output removed, nothing written under a final name"


class _Quantize(click.Group):
    """The ``quantize`` group: a user error (:class:`ForgeError`, a usage error, a file the system refuses) is one
    line ``error: ...`` on stderr and exit 2; Ctrl-C or SIGTERM removes partial output (every writer renames only
    when done) and exits 130."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The command ``name``, its module imported now: the one place where gguf-forge imports a module by name
        (tests/test_layout.py checks that every target is a module of this package, tools/cli)."""
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, function = target.split(":")
        command = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        assert isinstance(command, click.Command) and command.name == name, target
        return command

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:  # the group's own options (``quantize --bogus``)
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            _usage_error(e)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ForgeError as e:
            click.echo(f"error: {self._named(ctx, e)}", err=True)
            ctx.exit(2)
        except click.UsageError as e:  # a command's options and arguments
            _usage_error(e)
        except OSError as e:  # the system refused a file (permissions, a full disk...): the writers left nothing
            if e.errno == errno.EPIPE:
                raise
            click.echo(f"error: {_os_error(e)}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            if quantizer_running():
                # llama.cpp's quantizer is a C call that cannot be cancelled; its thread is held (its temporary
                # file already removed), and a normal exit would finalize Python and run C++ static destructors
                # under it: leave at once
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            ctx.exit(130)

    def _named(self, ctx: click.Context, e: ForgeError) -> ForgeError:
        """``e`` led by the running command's option for the library parameter it names (``option="ctx"`` ->
        ``--ctx``); unchanged when it names none or the command has no such option (e.g. a fixed value)."""
        if not e.option or e.option.startswith("-") or not ctx.invoked_subcommand:
            return e
        command = self.get_command(ctx, ctx.invoked_subcommand)
        flags = [p.opts for p in (command.params if command else []) if isinstance(p, click.Option)
                 and p.name == e.option]
        return e.from_option(max(flags[0], key=len)) if flags else e


def _usage_error(e: click.UsageError) -> NoReturn:
    """Click's usage error as the project's one line, ``error: ... (see quantize CMD --help)``, exit 2 (a bare
    ``quantize``, which click answers with the help text, is left to click)."""
    if isinstance(e, click.exceptions.NoArgsIsHelpError):
        raise e
    ctx = e.ctx
    path = ["quantize"]
    while ctx is not None and ctx.parent is not None:
        path.insert(1, ctx.info_name or "")
        ctx = ctx.parent
    message = " ".join(e.format_message().split())
    click.echo(f"error: {message} (see {' '.join(path)} --help)", err=True)
    raise click.exceptions.Exit(2)


def _os_error(e: OSError) -> str:
    """``path: reason`` of an OSError (both paths of a failed rename)."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.filename is None:
        return reason
    if e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {reason}"
    return f"{e.filename}: {reason}"


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.group(cls=_Quantize, context_settings={"help_option_names": ["-h", "--help"]})
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
    # a kill (SIGTERM) cleans up like Ctrl-C: partial output removed, a message, exit 130
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
