"""Tool calling: the tools a chat offers (OpenAI function schemas) and the tool calls in a model's reply.

A template shows the model its tools in its own words, and the model answers a call in the format its template
renders ``tool_calls`` in. Which format applies is derived from the template itself (:func:`detect_format`):

========== ================================================================= ==========================================
format     reply text                                                        templates
========== ================================================================= ==========================================
hermes     ``<tool_call>{"name": .., "arguments": {..}}</tool_call>`` (and   Qwen2.5/3/3.5, Hermes 2 Pro/3, QwQ,
           Qwen3-Coder's ``<tool_call><function=NAME><parameter=K>V...``,     Qwen3-Coder, Granite 4, GLM-4.5+
           GLM's ``<tool_call>NAME<arg_key>K</arg_key><arg_value>V...``)
mistral    ``[TOOL_CALLS][{"name": .., "arguments": {..}}]`` or               Mistral v0.3 / Nemo / Small 3.x,
           ``[TOOL_CALLS]NAME[ARGS]{..}``                                     Ministral, Devstral
llama3     ``<|python_tag|>{"name": .., "parameters": {..}}`` or the JSON     Llama 3.1 / 3.2 / 3.3
           object alone
granite    ``<|tool_call|>[{"name": .., "arguments": {..}}]``                 Granite 3.x
harmony    ``<|channel|>commentary to=functions.NAME ...<|message|>{..}``     gpt-oss
deepseek   ``<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME```json{..}```...``  DeepSeek-R1 / V3.x
gemma      ``<|tool_call>call:NAME{k:v,...}<tool_call|>``                     Gemma 4
kimi       ``<|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>{..}``  Kimi K2
========== ================================================================= ==========================================

Public surface:

- :func:`load_tools` (``--tools FILE.json``) and :func:`check_tools` (a request's ``tools``): validated OpenAI
  function tools, errors naming the file or field.
- :func:`detect_format`, :func:`check_template_sees_tools`.
- :func:`parse`: reply text -> :class:`Parsed` (``content`` and OpenAI-shaped ``tool_calls``).
- :func:`start_markers`: where a call may begin (a stream holds text back from there).
- :func:`template_messages`: OpenAI messages as chat templates expect them (tool-call arguments as objects).
- :func:`describe`: ``get_weather({"city": "Paris"})`` for showing a call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import chat_template
from ...errors import ForgeError
from ...files import read_text_file
from ...modelfiles import markers
from ...modelfiles.markers import FORMATS, detect_format
from ...modelfiles.markers import start_markers as start_markers  # re-exported: chat, serve

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# the formats and their markers are owned by modelfiles.markers (the Ollama TEMPLATE checks its tool-call text
# against the same table)
_DS_BEGIN, _DS_SEP, _DS_END = markers.DS_BEGIN, markers.DS_SEP, markers.DS_END
_DS_ALL_BEGIN, _DS_ALL_END = markers.DS_ALL_BEGIN, markers.DS_ALL_END


# ---------------------------------------------------------------------------------------------- tools


def load_tools(path: str | Path) -> list[dict[str, Any]]:
    """The tools in ``path``: a JSON list of OpenAI tools (``{"type": "function", "function": {...}}``), or an
    object with such a ``tools`` list; bare function objects (``{"name", "description", "parameters"}``) are
    accepted and wrapped. Anything else is a one-line ForgeError naming the file and the entry."""
    path = Path(path)
    where = f"--tools {path}"
    text = read_text_file(path, where)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ForgeError(f"{where}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ForgeError(f"{where}: JSON nested too deeply") from None
    if isinstance(value, dict) and "tools" in value:
        value = value["tools"]
    elif isinstance(value, dict):
        value = [value]
    return check_tools(value, where)


def check_tools(value: Any, where: str = "tools") -> list[dict[str, Any]]:
    """``value`` as a list of OpenAI function tools (bare functions wrapped), or a ForgeError naming the entry."""
    if not isinstance(value, list) or not value:
        raise ForgeError(f"{where}: expected a non-empty list of tools "
                         '([{"type": "function", "function": {"name": ..., "parameters": {...}}}])')
    out, seen = [], set()
    for i, tool in enumerate(value):
        at = f"{where}: tool {i + 1}"
        if not isinstance(tool, dict):
            raise ForgeError(f"{at}: expected an object, got {type(tool).__name__}")
        if "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        if tool.get("type", "function") != "function":
            raise ForgeError(f"{at}: type {tool.get('type')!r} is not supported (only \"function\")")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ForgeError(f"{at}: expected a \"function\" object with a name")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ForgeError(f"{at}: function name {name!r} must be 1-64 letters, digits, _ . : or -")
        if name in seen:
            raise ForgeError(f"{at}: function {name!r} is defined twice")
        seen.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise ForgeError(f"{at} ({name}): \"description\" must be a string")
        params = fn.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise ForgeError(f"{at} ({name}): \"parameters\" must be a JSON schema object "
                             '({"type": "object", "properties": {...}})')
        clean = {"name": name}
        if fn.get("description") is not None:
            clean["description"] = fn["description"]
        clean["parameters"] = params if params is not None else {"type": "object", "properties": {}}
        out.append({"type": "function", "function": clean})
    return out


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or []]


# ---------------------------------------------------------------------------------------------- templates


def check_template_sees_tools(template: str, tools: list[dict[str, Any]], *, bos_token: str = "",
                              eos_token: str = "") -> str:
    """The tool-call format of ``template``, after checking that the template shows ``tools`` to the model (its
    rendering changes with them) and that its format is known; a ForgeError otherwise (the model would never see
    the tools, or its calls could not be read)."""
    msgs = [{"role": "user", "content": "Hello."}]
    try:
        plain: str | None = chat_template.render(template, msgs, bos_token=bos_token, eos_token=eos_token)
    except ForgeError:  # a template that needs tools (Hermes 2 Pro's iterates them unconditionally)
        plain = None
    with_tools = chat_template.render(template, msgs, bos_token=bos_token, eos_token=eos_token, tools=tools)
    if plain == with_tools:
        raise ForgeError("the chat template has no tools section (it renders the same prompt with and without "
                         "tools), so the model would never see them; use a template with tool support (--template)")
    fmt = detect_format(template)
    if fmt is None:
        raise ForgeError("the chat template renders tools, but its tool-call format is none of those gguf-forge "
                         f"reads ({', '.join(FORMATS)}); calls in replies could not be returned")
    return fmt


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as Hugging Face chat templates read them: a tool call's ``arguments`` JSON string becomes
    an object (templates write it with ``tojson`` or iterate over it), ``content: null`` becomes ``""``."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        calls = m.get("tool_calls")
        if calls:
            fixed = []
            for c in calls:
                c = dict(c)
                fn = dict(c.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        parsed = json.loads(args)
                        if isinstance(parsed, dict):
                            fn["arguments"] = parsed
                    except (json.JSONDecodeError, RecursionError):
                        pass
                c["function"] = fn
                fixed.append(c)
            m["tool_calls"] = fixed
        out.append(m)
    return out


# ---------------------------------------------------------------------------------------------- replies


@dataclass
class Parsed:
    """A reply split into its text and its tool calls (OpenAI shape); ``errors`` names calls that were begun but
    could not be read (their text stays in ``content``)."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [c["function"]["name"] for c in self.tool_calls]


def _call(name: str, arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _json_at(text: str, pos: int) -> tuple[Any, int]:
    """The JSON value starting at ``pos`` (after whitespace) and the index after it; ValueError when none."""
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    try:
        return json.JSONDecoder().raw_decode(text, pos)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"invalid JSON at character {pos}: {getattr(e, 'msg', 'too deep')}") from None


def _from_object(obj: Any, keys: tuple[str, ...] = ("arguments", "parameters")) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("expected an object with a \"name\"")
    args = next((obj[k] for k in keys if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ValueError(f"arguments of {obj['name']} are not JSON") from None
    if not isinstance(args, dict):
        raise ValueError(f"arguments of {obj['name']} are not an object")
    return _call(obj["name"], args)


def parse(text: str, fmt: str | None) -> Parsed:
    """Split ``text`` (a reply, special tokens rendered) into content and tool calls in format ``fmt``.

    A call that is begun but unreadable (bad JSON, no name) is not returned: its text stays in the content and
    :attr:`Parsed.errors` says why. With ``fmt`` None the reply is all content."""
    if fmt is None:
        return Parsed(text)
    try:
        return _PARSERS[fmt](text)
    except ValueError as e:
        return Parsed(text, errors=[str(e)])


def _parse_hermes(text: str) -> Parsed:
    calls, errors, kept = [], [], []
    pos = 0
    for m in re.finditer(r"<tool_call>(.*?)(?:</tool_call>|$)", text, re.S):
        kept.append(text[pos:m.start()])
        pos = m.end()
        body = m.group(1).strip()
        try:
            if body.startswith("<function="):
                calls.append(_xml_call(body))
            elif not body.startswith("{"):  # GLM-4.5+: NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>...
                calls.append(_glm_call(body))
            else:
                obj, end = _json_at(body, 0)
                calls.append(_from_object(obj))
        except ValueError as e:
            errors.append(f"<tool_call> {len(calls) + len(errors) + 1}: {e}")
            kept.append(m.group(0))
    kept.append(text[pos:])
    return Parsed("".join(kept).strip() if calls else text, calls, errors)


def _xml_call(body: str) -> dict[str, Any]:
    """Qwen3-Coder's ``<function=NAME><parameter=K>V</parameter>...</function>``."""
    m = re.match(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", body, re.S)
    if not m:
        raise ValueError("expected <function=NAME>")
    args: dict[str, Any] = {}
    for p in re.finditer(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", m.group(2), re.S):
        value: Any = p.group(2)
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            pass
        args[p.group(1)] = value
    return _call(m.group(1), args)


def _glm_call(body: str) -> dict[str, Any]:
    name, _, rest = body.partition("<arg_key>")
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError("expected a JSON object, <function=NAME> or NAME<arg_key>...")
    args: dict[str, Any] = {}
    for a in re.finditer(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", "<arg_key>" + rest, re.S):
        value: Any = a.group(2)
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            pass
        args[a.group(1).strip()] = value
    return _call(name, args)


def _parse_kimi(text: str) -> Parsed:
    i = text.find("<|tool_calls_section_begin|>")
    j = text.find("<|tool_call_begin|>")
    i = min(k for k in (i, j, len(text)) if k >= 0)
    if i == len(text):
        return Parsed(text)
    calls = []
    for m in re.finditer(r"<\|tool_call_begin\|>\s*(?:functions\.)?([A-Za-z0-9_.:-]+?)(?::\d+)?\s*"
                         r"<\|tool_call_argument_begin\|>(.*?)(?:<\|tool_call_end\|>|$)", text[i:], re.S):
        args, _ = _json_at(m.group(2), 0)
        calls.append(_from_object({"name": m.group(1), "arguments": args}))
    if not calls:
        raise ValueError("tool-call markers without a readable call")
    return Parsed(text[:i].strip(), calls)


def _parse_mistral(text: str) -> Parsed:
    i = text.find("[TOOL_CALLS]")
    if i < 0:
        return Parsed(text)
    content, rest = text[:i], text[i:]
    calls = []
    for chunk in rest.split("[TOOL_CALLS]")[1:]:
        chunk = chunk.strip()
        if chunk.startswith("[") or chunk.startswith("{"):
            value, _ = _json_at(chunk, 0)
            for obj in value if isinstance(value, list) else [value]:
                calls.append(_from_object(obj))
        else:
            m = re.match(r"([A-Za-z0-9_.:-]+)(?:\[CALL_ID\][A-Za-z0-9]*)?\[ARGS\]", chunk)
            if not m:
                raise ValueError("expected [TOOL_CALLS][{...}] or [TOOL_CALLS]NAME[ARGS]{...}")
            args, _ = _json_at(chunk, m.end())
            calls.append(_from_object({"name": m.group(1), "arguments": args}))
    return Parsed(content.strip(), calls)


def _parse_llama3(text: str) -> Parsed:
    i = text.find("<|python_tag|>")
    if i >= 0:
        content, body = text[:i], text[i + len("<|python_tag|>"):]
    elif text.lstrip().startswith("{"):
        content, body = "", text
    else:
        return Parsed(text)
    calls = []
    pos = 0
    while True:
        obj, pos = _json_at(body, pos)
        calls.append(_from_object(obj, ("parameters", "arguments")))
        rest = body[pos:].lstrip()
        if not rest.startswith(";"):
            break
        pos = len(body) - len(rest) + 1
    return Parsed(content.strip(), calls)


def _parse_granite(text: str) -> Parsed:
    i = text.find("<|tool_call|>")
    if i < 0:
        return Parsed(text)
    value, _ = _json_at(text, i + len("<|tool_call|>"))
    return Parsed(text[:i].strip(), [_from_object(o) for o in (value if isinstance(value, list) else [value])])


def _parse_harmony(text: str) -> Parsed:
    calls = []
    for m in re.finditer(r"to=functions\.([A-Za-z0-9_.:-]+)(.*?)<\|message\|>(.*?)(?=<\|call\|>|<\|end\|>|"
                         r"<\|start\|>|$)", text, re.S):
        if "<|start|>" in m.group(2):
            continue
        args, _ = _json_at(m.group(3), 0)
        calls.append(_from_object({"name": m.group(1), "arguments": args}))
    final = re.search(r"<\|channel\|>final<\|message\|>(.*?)(?:<\|end\|>|<\|return\|>|$)", text, re.S)
    if final:
        content = final.group(1)
    elif calls or "<|channel|>" in text:
        content = ""  # analysis (reasoning) and commentary only
    else:
        content = text
    return Parsed(content.strip(), calls)


def _parse_deepseek(text: str) -> Parsed:
    i = min((k for k in (text.find(_DS_ALL_BEGIN), text.find(_DS_BEGIN)) if k >= 0), default=-1)
    if i < 0:
        return Parsed(text)
    calls = []
    for m in re.finditer(re.escape(_DS_BEGIN) + r"(.*?)" + re.escape(_DS_SEP) + r"(.*?)(?:" + re.escape(_DS_END)
                         + r"|$)", text[i:], re.S):
        head, body = m.group(1).strip(), m.group(2)
        if head == "function":  # R1: function<sep>NAME\n```json\n{...}\n```
            name, _, body = body.partition("\n")
            body = re.sub(r"^\s*```(?:json)?", "", body)
        else:  # V3.1: NAME<sep>{...}
            name = head
        args, _ = _json_at(body, 0)
        calls.append(_from_object({"name": name.strip(), "arguments": args}))
    if not calls:
        raise ValueError("tool-call markers without a readable call")
    return Parsed(text[:i].strip(), calls)


def _parse_gemma(text: str) -> Parsed:
    calls, pos, kept = [], 0, []
    for m in re.finditer(r"<\|tool_call>call:([A-Za-z0-9_.:-]+)\{(.*?)\}<tool_call\|>", text, re.S):
        kept.append(text[pos:m.start()])
        pos = m.end()
        args: dict[str, Any] = {}
        for a in re.finditer(r'([A-Za-z0-9_]+):(<\|"\|>(.*?)<\|"\|>|[^,]*)', m.group(2), re.S):
            if a.group(3) is not None:
                args[a.group(1)] = a.group(3)
            else:
                try:
                    args[a.group(1)] = json.loads(a.group(2))
                except (json.JSONDecodeError, RecursionError):
                    args[a.group(1)] = a.group(2)
        calls.append(_call(m.group(1), args))
    kept.append(text[pos:])
    return Parsed("".join(kept).strip() if calls else text, calls)


_PARSERS = {"kimi": _parse_kimi,
            "hermes": _parse_hermes, "mistral": _parse_mistral, "llama3": _parse_llama3, "granite": _parse_granite,
            "harmony": _parse_harmony, "deepseek": _parse_deepseek, "gemma": _parse_gemma}


def describe(call: dict[str, Any]) -> str:
    """``get_weather({"city": "Paris"})``"""
    return f"{call['function']['name']}({call['function']['arguments']})"


def holdback(text: str, markers: list[str]) -> int:
    """Where in ``text`` a stream must stop sending content: at the first marker, or at a suffix that may be the
    start of one (``<tool_`` at the end); ``len(text)`` when all of it is safe."""
    cut = len(text)
    for mk in markers:
        i = text.find(mk)
        if i >= 0:
            cut = min(cut, i)
        for n in range(min(len(mk) - 1, len(text)), 0, -1):
            if text.endswith(mk[:n]):
                cut = min(cut, len(text) - n)
                break
    return cut
