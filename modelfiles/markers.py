"""Tool-call markers: the one place that says which format a chat template renders assistant tool calls in, and
which texts such a call starts with in a model's reply.

Used by :mod:`.tools` (the TEMPLATE's tool-call text must start with the marker the model emits, or Ollama's
parser, which looks for the tag the TEMPLATE renders first, would not see the model's calls) and by
:mod:`gguf_forge.tools.chat.toolcalls` (parsing the calls out of a reply: chat, smoke, serve).
"""

from __future__ import annotations

FORMATS = ("hermes", "mistral", "llama3", "granite", "harmony", "deepseek", "gemma", "kimi")
DS_BEGIN, DS_SEP, DS_END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"
DS_ALL_BEGIN, DS_ALL_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"

#: format -> texts a call starts with in a reply (llama3 also: a reply that is the JSON object alone, ``{``)
MARKERS = {
    "hermes": ["<tool_call>"],
    "mistral": ["[TOOL_CALLS]"],
    "llama3": ["<|python_tag|>"],
    "granite": ["<|tool_call|>"],
    "harmony": ["<|start|>", "<|channel|>", " to=functions.", "to=functions."],
    "deepseek": [DS_ALL_BEGIN, DS_BEGIN],
    "gemma": ["<|tool_call>"],
    "kimi": ["<|tool_calls_section_begin|>", "<|tool_call_begin|>"],
}


def detect_format(template: str) -> str | None:
    """The tool-call format ``template`` renders assistant tool calls in (see
    :mod:`gguf_forge.tools.chat.toolcalls` for the reply shapes), from the markers in its source; None when it has
    none of them (a template that takes tools in a format not listed)."""
    if "to=functions" in template or ("<|channel|>" in template and "functions." in template):
        return "harmony"
    if DS_BEGIN in template or DS_ALL_BEGIN in template:
        return "deepseek"
    if "<|tool_call_begin|>" in template:
        return "kimi"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|tool_call|>" in template:
        return "granite"
    if "<|tool_call>" in template:
        return "gemma"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ('"parameters"' in template and "ipython" in template):
        return "llama3"
    return None


def start_markers(fmt: str | None) -> list[str]:
    """The texts a tool call may start with in format ``fmt``."""
    return list(MARKERS.get(fmt or "", []))


def starts_with_marker(text: str, fmt: str | None) -> bool:
    """Whether a tool call written as ``text`` (e.g. the tag Ollama derives from a TEMPLATE) starts with one of the
    markers of ``fmt``; a Llama 3 call may also be the JSON object alone."""
    text = text.lstrip()
    return any(text.startswith(m.strip()) for m in start_markers(fmt)) or (fmt == "llama3" and text.startswith("{"))
