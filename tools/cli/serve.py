"""``quantize serve``: an OpenAI-compatible API and a web chat page for GGUF files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from ...errors import ForgeError
from ..serve import ModelPool, find_models
from ..serve import serve as run_server
from . import options as opt


def start(paths: list[Path], *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          ctx: int = 4096, threads: int | None = None, parallel: int = 1, template: str | None = None,
          system: str | None = None) -> None:
    """Find the models, say where the server listens, serve until Ctrl-C or SIGTERM (also ``merge-convert --serve``)."""
    models = find_models(paths)
    if api_key is not None and not api_key.strip():
        raise ForgeError("--api-key: empty; give a key, or leave the option out")
    _check_listen(host, port)
    pool = ModelPool(models, ctx=ctx, threads=threads, parallel=parallel, template=opt.template_source(template),
                     system=system)
    shown = f"[{host}]" if ":" in host else host
    opt.note(f"serving {len(models)} model(s) at http://{shown}:{port}/ (OpenAI API at http://{shown}:{port}/v1"
             f"{', key required' if api_key else ''}); Ctrl-C stops")
    for mid, path in models.items():
        opt.note(f"  {mid}  ({path})")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        opt.note(f"warning: listening on {host} without --api-key: anyone who can reach this machine can use it")
    run_server(pool, host=host, port=port, api_key=api_key)
    opt.note("stopped")


def _check_listen(host: str, port: int) -> None:
    """A one-line error now for an address this machine cannot listen on (a port in use, a foreign address)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as e:
        raise ForgeError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                         "is another server using the port? try another --port") from None


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; then use --api-key).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True, help="TCP port.")
@click.option("--api-key", metavar="KEY", default=lambda: os.environ.get("GGUF_FORGE_API_KEY"),
              help="Every /v1 route needs 'Authorization: Bearer KEY' (default: $GGUF_FORGE_API_KEY; none: open).")
@opt.ctx("Context window of each model in tokens (prompt + reply).", default=4096, min=16)
@opt.threads("CPU threads per generation (default: the number of physical cores).")
@click.option("--parallel", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Requests one model answers at once, each with its own context (the others wait in order).")
@opt.system("Default system prompt for conversations without one (default: the template's own).")
@opt.template("Chat template instead of each GGUF's own")
def serve(paths: tuple[Path, ...], host: str, port: int, api_key: str | None, ctx: int, threads: int | None,
          parallel: int, system: str | None, template: str | None) -> None:
    """Serve GGUF files over an OpenAI-compatible API, with a web chat page at /.

    PATH is a GGUF or a pipeline output folder (every GGUF in its manifest); each model is named after its file
    (without .gguf) and loaded on first use. Replies come from the same code as `quantize chat`: the GGUF's chat
    template, its end-of-turn tokens, the template's default system prompt; greedy unless a request sets
    temperature. Endpoints: GET /v1/models, POST /v1/chat/completions (streaming, tools -> tool_calls),
    POST /v1/completions, GET /health, and the page at /. Requests to one model wait in order (--parallel N
    answers N at once); a client that goes away stops its generation; Ctrl-C or SIGTERM stops the server (exit 0).

    \b
    Examples:
      quantize serve out/                     # every quant of a merge-convert run
      quantize serve My-Chat-Q4_K_M.gguf --port 8080 --api-key s3cret --host 0.0.0.0
      curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "My-Chat-Q4_K_M", "messages": [{"role": "user", "content": "你是谁？"}]}'
    """
    start(list(paths), host=host, port=port, api_key=api_key, ctx=ctx, threads=threads, parallel=parallel,
          template=template, system=system)
