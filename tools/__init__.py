"""The ``quantize`` command line and the tools around it.

Public surface:

- :func:`gguf_forge.tools.cli.main`: the ``quantize`` click group (``convert``, ``inspect``, ``demo``).
- :func:`inspect_gguf` / :func:`format_inspection`: what a GGUF file holds.
- :func:`default_model_dir`: the embedded default model (SmolLM2-135M-Instruct) as a HF directory.
- :func:`load_model`, :func:`chat_handler_for`, :func:`one_turn`: CPU chat through llama-cpp-python
  with the GGUF's own chat template.
- :class:`ChatSession`: multi-turn CPU chat (streaming, history kept within the context, stats) behind
  ``quantize chat``; :func:`run_smoke` -> :class:`SmokeReport` (:func:`load_prompts`, :func:`format_table`)
  behind ``quantize smoke``.
- :func:`gguf_forge.tools.publish.publish` -> :class:`~gguf_forge.tools.publish.PublishPlan`: upload a
  ``merge-convert`` folder to Hugging Face / ModelScope (``quantize publish``).
- :func:`gguf_forge.tools.gguf_split.split_gguf` / ``plan_split``: llama.cpp ``gguf-split`` shards.
"""

from .chat import ChatSession, chat_handler_for, load_model, one_turn
from .default_model import cache_dir, default_model_dir
from .inspect_gguf import format_inspection, inspect_gguf
from .smoke import SmokePrompt, SmokeReport, format_table, load_prompts, run_smoke

__all__ = [
    "cache_dir", "chat_handler_for", "default_model_dir", "format_inspection", "inspect_gguf", "load_model",
    "one_turn", "ChatSession", "SmokePrompt", "SmokeReport", "format_table", "load_prompts", "run_smoke",
]
