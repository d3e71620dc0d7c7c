"""Chatting with a GGUF on the CPU, and smoke-testing its replies.

Public surface:

- :class:`ChatSession` (``quantize chat``): multi-turn chat, streaming, history kept within the context, stats;
  :func:`one_turn`: one greedy reply.
- :func:`run_smoke` -> :class:`SmokeReport` (``quantize smoke``), :func:`load_prompts`, :func:`format_table`.

``data/smoke_prompts.jsonl`` is the default bilingual smoke suite.
"""

from .session import ChatSession, ChatStats, Reply, one_turn
from .smoke import SmokePrompt, SmokeReport, format_table, load_prompts, run_smoke

__all__ = ["ChatSession", "ChatStats", "Reply", "SmokePrompt", "SmokeReport", "format_table", "load_prompts",
           "one_turn", "run_smoke"]
