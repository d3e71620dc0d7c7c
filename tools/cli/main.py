"""The ``quantize`` group: one error boundary for every command, and the explicit list of commands."""

from __future__ import annotations

import signal
from typing import Any

import click

from ... import __version__
from ...errors import ForgeError
from . import chat, convert, modelfile, pipeline, publish, quant

#: every command of ``quantize`` (its --help lists them by name); a new command is added here
COMMANDS: list[click.Command] = [
    pipeline.merge_convert, convert.convert, convert.merge, quant.quant, quant.imatrix, quant.evaluate_cmd,
    modelfile.modelfile, chat.chat, chat.smoke, convert.inspect, publish.publish, pipeline.demo,
]

INTERRUPTED = "interrupted: partial output removed, nothing written under a final name"


class _Quantize(click.Group):
    """The ``quantize`` group: a user error (:class:`ForgeError`) is one line on stderr and exit 2; Ctrl-C or
    SIGTERM removes partial output (every writer renames only when done) and exits 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ForgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            ctx.exit(130)


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


for _command in COMMANDS:
    main.add_command(_command)
