"""``quantize serve``: an OpenAI-compatible API and a web chat page for GGUF files, on FastAPI and uvicorn.

Every reply comes from :meth:`gguf_forge.tools.chat.ChatSession.complete`, the code path of ``quantize chat``
(the GGUF's template, its end-of-generation tokens, the template's default system prompt).

Public surface:

- :func:`find_models`: ``PATH...`` (GGUFs, pipeline folders) -> model id -> file.
- :class:`ModelPool`: the sessions ("slots") of each model, loaded on first use; a request holds one slot for
  its whole generation, so one KV cache never serves two requests at once.
- :func:`create_app`: the FastAPI app (``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/health``,
  the page at ``/``); :func:`serve`: run it with uvicorn until Ctrl-C or SIGTERM.
"""

from .app import create_app, serve
from .models import ModelPool, find_models

__all__ = ["ModelPool", "create_app", "find_models", "serve"]
