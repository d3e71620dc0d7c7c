"""Tool calling and thinking in the Ollama TEMPLATE: inferred from the Jinja template, proven by rendering.

The plain layout (:class:`~gguf_forge.modelfiles.translate.TurnFormat`) covers system/user/assistant turns. This
module adds, for templates that have them, the parts Ollama's template data carries (template/template.go):
``.Tools`` (the tools block, in the system turn or the first user turn), assistant ``.ToolCalls``, ``tool`` role
messages (several in a row), ``.Thinking`` of earlier replies and the ``.Think`` / ``.IsThinkSet`` flags.

Method: the Jinja template is rendered (:func:`gguf_forge.chat_template.render`, transformers-identical) on
conversations whose texts are sentinels; the output is cut at the sentinels into the literal pieces of one of the
tool layouts below (a layout is the *shape* of the Go template; every literal in it comes from the model's own
template). The Go template built from them is then run (:mod:`.gotemplate`, held to the real Go by the tests) on the
tool suite (:func:`tool_suite`) next to the Jinja rendering of the same conversations. The only difference allowed
is whitespace inside complete JSON values (Go's ``json.Marshal`` is compact; Python's ``tojson`` writes ``", "``
and ``": "`` or indents): :func:`same_but_json_whitespace`. Anything else: the layout does not apply; when none
applies the tools part is refused with the first difference, and the TEMPLATE is written without ``.Tools``
(Ollama then answers a request with tools "does not support tools" instead of prompting the model wrongly).

Layouts: ``chatml`` (a tools block in the system turn, each tool as JSON; calls as marker + JSON; results wrapped in
a user/tool turn, consecutive results sharing it: Qwen2.5, Qwen3, Hermes-style), ``llama3-json`` (Llama 3.1-3.3:
tools block in the first user turn, a call is the JSON object alone, results in an ``ipython`` turn).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .. import chat_template
from ..errors import ForgeError
from . import gotemplate, markers

#: the Modelfile comment (and README statement) for the one difference a tool TEMPLATE may have
JSON_NOTE = ("tool definitions, call arguments and JSON results are written by Ollama's json (Go json.Marshal: "
             "compact, no spaces after , and :, <>& escaped as \\u003c...) where the original chat template's "
             "tojson writes spaces or indents: whitespace inside JSON is the only difference, checked by rendering "
             "tool definitions whose keys come in the order of Ollama's types (type, function: name, description, "
             "parameters: type, required, properties); Ollama writes other orders in that order")

# -- the tool suite ---------------------------------------------------------------------------------------------------
# Written in the key order Ollama's Go structs marshal in (parameters: type, required, properties; a property: type,
# description, enum; maps: sorted), so that JSON differs in whitespace only.
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "unit": {"type": "string", "description": "Temperature unit", "enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Get the local time in a timezone.",
        "parameters": {"type": "object", "required": ["timezone"], "properties": {
            "timezone": {"type": "string", "description": "IANA timezone name, e.g. Europe/Paris"}}}}},
]


@dataclass
class Case:
    """One conversation of the tool suite, in a neutral form (see :func:`jinja_messages`, :func:`ollama_messages`)."""

    name: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None  # a string: a reasoning effort level


def _call(name: str, args: dict[str, Any], cid: str) -> dict[str, Any]:
    return {"name": name, "arguments": args, "id": cid}


def tool_suite() -> list[Case]:
    """Conversations with tool definitions, one and two tool calls, results, thinking on and off."""
    sys_ = {"role": "system", "content": "You are a helpful assistant."}
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    call1 = {"role": "assistant", "content": "", "calls": [_call("get_weather", {"city": "Paris"}, "call00001")]}
    res1 = {"role": "tool", "content": '{"temperature": 18, "sky": "clear"}', "tool_name": "get_weather",
            "call_id": "call00001"}
    call2 = {"role": "assistant", "content": "", "calls": [
        _call("get_weather", {"city": "Paris", "unit": "celsius"}, "call00001"),
        _call("get_time", {"timezone": "Europe/Paris"}, "call00002")]}
    res2 = {"role": "tool", "content": "09:30", "tool_name": "get_time", "call_id": "call00002"}
    answer = {"role": "assistant", "content": "It is 18 degrees and clear in Paris."}
    more = {"role": "user", "content": "Thanks! And in Rome?"}
    reasoned = {"role": "assistant", "content": "It is 4.", "thinking": "The user asks 2+2. That is 4."}
    return [
        Case("tools, system and user", [sys_, ask], TOOLS),
        Case("tools, user only", [ask], TOOLS),
        Case("one tool call and its result", [sys_, ask, call1, res1], TOOLS),
        Case("one tool call, result, answer, next question", [ask, call1, res1, answer, more], TOOLS),
        Case("two tool calls and two results in a row", [sys_, ask, call2, {**res1, "content": "18 C"}, res2],
             TOOLS),
        Case("thinking on", [ask], None, True),
        Case("thinking off", [ask], None, False),
        Case("thinking on with tools", [sys_, ask], TOOLS, True),
        Case("thinking off after a tool call", [ask, call1, res1], TOOLS, False),
        Case("earlier reply with its reasoning, thinking on",
             [{"role": "user", "content": "What is 2+2?"}, reasoned, {"role": "user", "content": "And 3+3?"}],
             None, True),
        Case("a call with number, boolean and list arguments",
             [ask, {"role": "assistant", "content": "", "calls": [_call("get_weather", {
                 "city": "Paris", "days": 3, "fields": ["temp", "wind"], "hourly": True}, "call00003")]},
              {**res1, "call_id": "call00003"}], TOOLS),
        Case("reasoning before a tool call, thinking on",
             [ask, {**call1, "thinking": "I need the weather tool."}, res1], TOOLS, True),
        # a docstring-style description: a template that writes it without JSON escapes (Mistral Nemo's joins
        # '"description": "' + text + '"') writes a raw newline and quotes where Ollama's json writes \n and \"
        Case("a tool description with quotes and a newline", [ask], [
            {"type": "function", "function": {**TOOLS[0]["function"], "description":
                                              'Get the current weather in a city.\nSays "sunny" or "rainy".'}},
            TOOLS[1]]),
    ]


def jinja_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The OpenAI-style messages transformers' ``apply_chat_template`` takes (reasoning as ``reasoning_content``;
    :func:`gguf_forge.chat_template.render` also passes it as ``thinking``, as transformers does)."""
    out = []
    for m in messages:
        j: dict[str, Any] = {"role": m["role"], "content": m.get("content", "")}
        if m.get("calls"):
            j["tool_calls"] = [{"id": c["id"], "type": "function",
                                "function": {"name": c["name"], "arguments": c["arguments"]}} for c in m["calls"]]
        if m.get("thinking"):
            j["reasoning_content"] = m["thinking"]
        if m["role"] == "tool":
            j["tool_call_id"], j["name"] = m["call_id"], m["tool_name"]
        out.append(j)
    return out


def ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation as an Ollama chat request carries it (``thinking``, ``tool_calls``, ``tool_name``)."""
    out = []
    for m in messages:
        o: dict[str, Any] = {"role": m["role"], "content": m.get("content", "")}
        if m.get("calls"):
            o["tool_calls"] = [{"id": c["id"], "function": {"index": i, "name": c["name"],
                                                            "arguments": c["arguments"]}}
                               for i, c in enumerate(m["calls"])]
        if m.get("thinking"):
            o["thinking"] = m["thinking"]
        if m["role"] == "tool":
            o["tool_name"], o["tool_call_id"] = m["tool_name"], m["call_id"]
        out.append(o)
    return out


def jinja_render(template: str, case: Case, bos: str, eos: str, system: str | None,
                 tool_template: str | None = None) -> str:
    """The Jinja rendering (generation prompt on) of ``case``, with the Modelfile's SYSTEM first when the case has
    no system message (what Ollama sends); ``enable_thinking`` only when the case sets thinking. With a separate
    ``tool_template`` (a model's ``tool_use`` template) a case with tools is rendered by it, as transformers and
    llama.cpp choose it when a request has tools."""
    if tool_template and case.tools:
        template = tool_template
    msgs = jinja_messages(case.messages)
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}, *msgs]
    extra: dict[str, Any] = {}
    if isinstance(case.think, str):  # a reasoning effort (gpt-oss): Ollama's think "low" / "medium" / "high"
        extra["reasoning_effort"] = case.think
    elif case.think is not None:
        extra["enable_thinking"] = case.think
    return chat_template.render(template, msgs, add_generation_prompt=True, bos_token=bos, eos_token=eos,
                                tools=case.tools, **extra)


def go_render(go_template: str, case: Case, system: str | None) -> str:
    """The Go template's rendering of ``case`` on Ollama's data (:mod:`.gotemplate`)."""
    data = gotemplate.ollama_data(ollama_messages(case.messages), case.tools, case.think, system)
    return gotemplate.render(go_template, data)


# -- comparing: equal except whitespace inside JSON values ------------------------------------------------------------
_DECODER = json.JSONDecoder(object_pairs_hook=list)


def _json_span(text: str, i: int) -> int:
    """End of a JSON object/array starting at ``text[i]``, or -1."""
    try:
        _, end = _DECODER.raw_decode(text, i)
    except ValueError:
        return -1
    return end


def _squeeze(span: str) -> str:
    """A JSON text without the whitespace outside its strings."""
    out, in_str, esc = [], False, False
    for ch in span:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            out.append(ch)
        elif not ch.isspace():
            out.append(ch)
    return "".join(out)


def same_but_json_whitespace(a: str, b: str) -> tuple[bool, bool]:
    same, ws, _, _ = _compare(a, b)
    return same, ws


def _compare(a: str, b: str) -> tuple[bool, bool, int, int]:
    """(equal apart from whitespace inside complete JSON objects/arrays, and whether any such whitespace differs).
    The JSON values must be the same text once that whitespace is removed (same keys, order, escapes)."""
    if a == b:
        return True, False, len(a), len(b)
    i = j = 0
    ws = False
    while i < len(a) and j < len(b):
        if a[i] in "{[" and b[j] == a[i]:
            ea, eb = _json_span(a, i), _json_span(b, j)
            if ea > 0 and eb > 0:
                sa, sb = a[i:ea], b[j:eb]
                if sa != sb:
                    if _squeeze(sa) != _squeeze(sb):
                        return False, ws, i, j
                    ws = True
                i, j = ea, eb
                continue
        if a[i] != b[j]:
            return False, ws, i, j
        i += 1
        j += 1
    return (i == len(a) and j == len(b)), ws, i, j


def first_difference(a: str, b: str) -> str:
    """Where ``a`` (Jinja) and ``b`` (Go) first differ beyond JSON whitespace."""
    _, _, i, j = _compare(a, b)
    if i < len(a) and j < len(b) and (a[i].isspace() or b[j].isspace()):
        # a JSON-like text that is not valid JSON on one side (a template that writes a string without escapes):
        # show where the two differ once whitespace outside quoted strings is set aside
        start = max(a.rfind("{", 0, i + 1), a.rfind("[", 0, i + 1), 0)
        sa, sb = _squeeze(a[start:start + 4000]), _squeeze(b[start - i + j:start - i + j + 4000])
        k = len(os.path.commonprefix([sa, sb]))
        if k < min(len(sa), len(sb)):
            return (f"Jinja renders {sa[max(0, k - 30):k + 30]!r}, the Go template {sb[max(0, k - 30):k + 30]!r} "
                    "(whitespace outside quoted strings set aside)")
    return f"Jinja renders {a[max(0, i - 30):i + 30]!r}, the Go template {b[max(0, j - 30):j + 30]!r}"


# -- inference --------------------------------------------------------------------------------------------------------
_S, _U, _U2, _C = "Zq8SYS", "Zq8USER", "Zq8SECOND", "Zq8CONTENT"
_N1, _N2, _R1, _R2, _TH = "Zq8fnOne", "Zq8fnTwo", "Zq8RESULTone", "Zq8RESULTtwo", "Zq8THINK"
_ARGS1, _ARGS2 = {"Zq8a": "Zq8v1", "Zq8b": "Zq8w1"}, {"Zq8c": "Zq8v2", "Zq8d": "Zq8w2"}
_STOOLS = [{"type": "function", "function": {"name": "Zq8toolA", "description": "Zq8descA", "parameters": {
    "type": "object", "required": ["Zq8p"], "properties": {"Zq8p": {"type": "string", "description": "Zq8pd"}}}}},
           {"type": "function", "function": {"name": "Zq8toolB", "description": "Zq8descB", "parameters": {
               "type": "object", "required": ["Zq8p"], "properties": {"Zq8p": {"type": "string",
                                                                                 "description": "Zq8pd"}}}}}]


class _NoLayout(Exception):
    """A layout does not fit this template (the message says where)."""


def _cut(text: str, marks: list[str], what: str) -> list[str]:
    parts, rest = [], text
    for m in marks:
        if text.count(m) != 1:
            raise _NoLayout(f"{what}: the probe value {m!r} is written {text.count(m)} times, not once")
        head, sep, rest2 = rest.partition(m)
        if not sep:
            raise _NoLayout(f"{what}: the parts come in another order")
        parts.append(head)
        rest = rest2
    parts.append(rest)
    return parts


@dataclass
class ToolParts:
    """The literal pieces of a tool layout, each cut from the Jinja template's own output."""

    layout: str
    pieces: dict[str, str] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)


class _R:
    def __init__(self, template: str, bos: str, eos: str, strip_bos: bool) -> None:
        self.template, self.bos, self.eos, self.strip_bos = template, bos, eos, strip_bos

    def __call__(self, msgs: list[dict[str, Any]], gen: bool = True, tools: Any = None, think: bool | None = None,
                 what: str = "") -> str:
        extra = {} if think is None else {"enable_thinking": think}
        try:
            out = chat_template.render(self.template, jinja_messages(msgs), add_generation_prompt=gen,
                                       bos_token=self.bos, eos_token=self.eos, tools=tools, **extra)
        except ForgeError as e:
            raise _NoLayout(f"{what}: {e}") from None
        if self.strip_bos and self.bos and out.startswith(self.bos):
            out = out[len(self.bos):]
        return out


def _dump(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def _tools_block(r: _R, fmt: Any, placement: str) -> dict[str, str]:
    """Pieces of the tools block: ``P [system Q | default D] (SEP tool)* POST`` placed in the system turn (chatml)
    or ``P (SEP tool)* POST first-user-content`` in the first user turn (llama3-json)."""
    u = {"role": "user", "content": _U}
    s = {"role": "system", "content": _S}
    with_sys = r([s, u], False, _STOOLS, what="a system message with tools")
    no_sys = r([u], False, _STOOLS, what="a user message with tools")
    for key, indent in (("tool", None), ("function", None), ("tool", 4), ("function", 4), ("tool", 2)):
        pick = (lambda t: t) if key == "tool" else (lambda t: t["function"])  # noqa: E731
        a, b = (json.dumps(pick(t), ensure_ascii=False, indent=indent) for t in _STOOLS[:2])
        if a in with_sys and b in with_sys:
            break
    else:
        raise _NoLayout("the tools block does not write each tool as JSON")
    head, sep, tail = _cut(with_sys, [a, b], "the tools block")
    head0, sep0, tail0 = _cut(no_sys, [a, b], "the tools block without a system message")
    if sep0 != sep:
        raise _NoLayout("the text between tools depends on the system message")
    if not head.endswith(sep) or not head0.endswith(sep):
        raise _NoLayout("the first tool is not introduced like the others")
    head, head0 = head[: len(head) - len(sep)], head0[: len(head0) - len(sep)]
    out = {"tool_sep": sep, "tool_key": key}
    if placement == "system" and _S not in head:
        # the system text follows the tools (Qwen3.5): P (sep tool)* POST [Q system] E, then the first user turn
        if head != head0:
            raise _NoLayout("the tools block opens differently without a system message")
        before_s, after_s = _cut(tail, [_S], "the system text after the tools")
        e = after_s.split(_U)[0]
        post0 = tail0.split(_U)[0]
        fits = e.endswith(fmt.user_pre) and post0.endswith(e)
        if not fits or not before_s.startswith(post0[: len(post0) - len(e)]):
            raise _NoLayout("the system text after the tools is not placed in a way a Go template can follow")
        post_t = post0[: len(post0) - len(e)]
        out.update(p=head, q="", d="", r="", post=post_t, sys_after=before_s[len(post_t):],
                   sys_end=e[: len(e) - len(fmt.user_pre)])
    elif placement == "system":
        p, q_r = _cut(head, [_S], "the tools block")
        if not head0.startswith(p):
            raise _NoLayout("the tools block opens differently without a system message")
        room = len(head0) - len(p)
        n = 0
        while n < min(len(q_r), room) and q_r[len(q_r) - 1 - n] == head0[len(head0) - 1 - n]:
            n += 1
        r_ = q_r[len(q_r) - n:] if n else ""
        out.update(p=p, q=q_r[: len(q_r) - len(r_)], d=head0[len(p): len(head0) - len(r_)], r=r_)
        # what follows the last tool up to the first user turn
        post, rest = _cut(tail, [_U], "after the tools block")
        post0, rest0 = _cut(tail0, [_U], "after the tools block")
        if post != post0 or rest != rest0:
            raise _NoLayout("the text after the tools depends on the system message")
        if not post.endswith(fmt.user_pre):
            raise _NoLayout("the tools block is not followed by the first user turn")
        out["post"] = post[: len(post) - len(fmt.user_pre)]
    else:
        # the tools open the first user turn: [system block] user_pre tools_pre (sep tool)* post content
        sys_part, after_sys = _cut(head, [_S], "the tools block")
        if not after_sys.startswith(fmt.sys_suf + fmt.user_pre):
            raise _NoLayout("the tools block does not open the first user turn")
        tools_pre = after_sys[len(fmt.sys_suf) + len(fmt.user_pre):]
        if not head0.endswith(fmt.user_pre + tools_pre):
            raise _NoLayout("the tools block opens differently without a system message")
        post = tail.split(_U)[0]
        if tail0.split(_U)[0] != post:
            raise _NoLayout("the text after the tools depends on the system message")
        out.update(sys_pre_t=sys_part, head_t=head0[: len(head0) - len(fmt.user_pre + tools_pre)],
                   tools_pre=tools_pre, post=post)
    return out


def _last_user_layout(r: _R, fmt: Any) -> dict[str, str]:
    """Mistral-style: the tools block right before the last user turn (tools as a JSON list), the calls of a turn as
    one list of JSON objects carrying their ids, each result with the id of its call."""
    u1, u2 = {"role": "user", "content": _U}, {"role": "user", "content": _U2}
    a = {"role": "assistant", "content": _C}
    x = r([u1, a, u2], True, _STOOLS, what="tools and three turns")
    t1, t2 = _dump(_STOOLS[0]), _dump(_STOOLS[1])
    before, pre, sep, post, rest = _cut(x, [_U, t1, t2, _U2], "tools before the last user turn")
    if not post.endswith(fmt.user_pre) or not pre.startswith(fmt.user_suf + fmt.asst_pre + _C + fmt.asst_suf):
        raise _NoLayout("the tools block is not right before the last user turn")
    pre = pre[len(fmt.user_suf + fmt.asst_pre + _C + fmt.asst_suf):]
    if not pre.startswith("") or _C in pre:
        raise _NoLayout("the tools block is not right before the last user turn")
    out = {"tools_pre": pre, "tool_sep": sep, "tools_post": post[: len(post) - len(fmt.user_pre)]}
    out.update(_raw_tool_text(r, [u1, a, u2], t1))
    # calls and results
    u = {"role": "user", "content": _U}
    two = {"role": "assistant", "content": "", "calls": [_call(_N1, _ARGS1, "Zq8id0001"),
                                                         _call(_N2, _ARGS2, "Zq8id0002")]}
    res1 = {"role": "tool", "content": _R1, "tool_name": _N1, "call_id": "Zq8id0001"}
    res2 = {"role": "tool", "content": _R2, "tool_name": _N2, "call_id": "Zq8id0002"}
    y = r([u, two, res1, res2], True, what="two tool calls and two results")
    a1, a2 = _dump(_ARGS1), _dump(_ARGS2)
    if y.count("Zq8id0001") != 2 or y.count(_R1) != 1:
        raise _NoLayout("tool results do not carry their call's id")
    # ids appear twice (call and result): cut in two steps
    calls_part, results_part = y.split(_R1, 1)[0], _R1 + y.split(_R1, 1)[1]
    c = _cut(calls_part, [_U, _N1, a1, "Zq8id0001", _N2, a2, "Zq8id0002"], "two tool calls")
    rr = _cut(results_part, [_R1, "Zq8id0001", _R2, "Zq8id0002"], "two tool results")
    _, open_pre, mid, mid_id, between, mid2, mid_id2, calls_end = c
    _, res_mid, res_between, res_mid2, tail = rr
    if mid != mid2 or mid_id != mid_id2:
        raise _NoLayout("the second tool call is not written like the first")
    if not open_pre.startswith(fmt.user_suf):
        raise _NoLayout("a tool-call turn does not follow the user turn as a reply does")
    open_pre = open_pre[len(fmt.user_suf):]
    # call_pre: the common suffix of the opening and the text between the calls
    n = 0
    while n < min(len(open_pre), len(between)) and open_pre[len(open_pre) - 1 - n] == between[len(between) - 1 - n]:
        n += 1
    call_pre = open_pre[len(open_pre) - n:]
    calls_open = open_pre[: len(open_pre) - n]
    # call_suf: the common prefix of what follows the first and the last call's id
    k = 0
    rest_between = between[: len(between) - n]
    while k < min(len(rest_between), len(calls_end)) and rest_between[k] == calls_end[k]:
        k += 1
    call_suf, call_sep = rest_between[:k], rest_between[k:]
    calls_close_res = calls_end[k:]
    if not tail.endswith(fmt.gen) or res_mid != res_mid2:
        raise _NoLayout("tool results are not written alike")
    res_suf = tail[: len(tail) - len(fmt.gen)] if fmt.gen else tail
    if not res_between.startswith(res_suf):
        raise _NoLayout("tool results are not written alike")
    res_pre = res_between[len(res_suf):]
    if not calls_close_res.endswith(res_pre):
        raise _NoLayout("tool results are not written alike")
    calls_close = calls_close_res[: len(calls_close_res) - len(res_pre)]
    if not call_pre.strip():
        raise _NoLayout("a tool call has no text before its name")
    out.update(calls_open=calls_open, call_pre=call_pre, mid=mid, mid_id=mid_id, call_suf=call_suf,
               call_sep=call_sep, calls_close=calls_close, res_pre=res_pre, res_mid=res_mid, res_suf=res_suf)
    return out


def _raw_tool_text(r: _R, msgs: list[dict[str, Any]], tool_json: str) -> dict[str, str]:
    """{} when the template writes a tool's description as JSON (escaped); the literal pieces around the name, the
    description and the JSON parameters when it joins the description in as it is (Mistral Nemo: ``'"description":
    "' + val + '"'``, so a newline or a quote in it stays raw), which the TEMPLATE then writes the same way."""
    fn = _STOOLS[0]["function"]
    raw = 'Zq8desc"with\nquotes"'
    probe = {**_STOOLS[0], "function": {**fn, "description": raw}}
    x = r(msgs, True, [probe, _STOOLS[1]], what="a tool description that needs JSON escapes")
    if _dump(probe) in x:
        return {}
    if tool_json.replace(_dump(fn["description"]), '"' + raw + '"') not in x:
        raise _NoLayout("a tool description with quotes or a newline is written neither as JSON nor as it is")
    a, b, c, d = _cut(tool_json, [fn["name"], fn["description"], _dump(fn["parameters"])], "a tool")
    return {"raw_a": a, "raw_b": b, "raw_c": c, "raw_d": d}


def _list_layout(r: _R, fmt: Any, template: str) -> dict[str, str]:
    """Granite 3.x: the tool list as one JSON value in a turn of its own after the system turn; assistant tool
    calls are not written (only the reply's text); a result is a turn of the ``tool`` role."""
    u, s = {"role": "user", "content": _U}, {"role": "system", "content": _S}
    with_t = r([s, u], True, _STOOLS, what="tools after a system message")
    without = r([s, u], True, what="a system message")
    k = without.find(_S)
    if k < 0 or not without[k + len(_S):].startswith(fmt.sys_suf):
        raise _NoLayout("the system turn is not where the plain layout puts it")
    k += len(_S) + len(fmt.sys_suf)
    head, rest = without[:k], without[k:]
    if not with_t.startswith(head) or not with_t.endswith(rest) or len(with_t) <= len(without):
        raise _NoLayout("the tools are not a block of their own after the system turn")
    block = with_t[len(head): len(with_t) - len(rest)]
    for indent in (None, 2, 4):
        dump = json.dumps(_STOOLS, ensure_ascii=False, indent=indent)
        if block.count(dump) == 1:
            break
    else:
        raise _NoLayout("the tools block does not write the tool list as JSON")
    pre, post = block.split(dump)
    call = {"role": "assistant", "content": "", "calls": [_call(_N1, _ARGS1, "call00001")]}
    res = {"role": "tool", "content": _R1, "tool_name": _N1, "call_id": "call00001"}
    x = r([u, call, res], True, _STOOLS, what="a tool call and its result")
    if _N1 in x:
        raise _NoLayout("tool calls are written in the conversation")
    _, mid, tail = _seq(x, [_U, _R1], "a tool call and its result")
    turn = fmt.user_suf + fmt.asst_pre + fmt.asst_suf
    if not mid.startswith(turn) or not tail.endswith(fmt.gen):
        raise _NoLayout("a tool-call turn is not written as an empty reply")
    marker = markers.start_markers(markers.detect_format(template))
    if not marker:
        raise _NoLayout("the template does not write tool calls and names no known tool-call marker")
    return {"pre": pre, "post": post, "tool_pre": mid[len(turn):], "tool_suf": tail[: len(tail) - len(fmt.gen)],
            "marker": marker[0]}


def _go_list_layout(fmt: Any, parts: ToolParts, lit: Any) -> str:
    """The plain layout plus the tool list after the system turn, tool results as turns, and the model's tool-call
    marker inside ``{{ if .ToolCalls }}{{ if false }}``: it renders nothing (the template writes no calls), but it
    is the tag Ollama's parser looks for in replies."""
    p, f = parts.pieces, parts.flags
    if f["keep"] != "never" or f["gen_on"] is not None or f["gen_off"] is not None:
        raise _NoLayout("thinking together with the tool list layout is not supported")
    if fmt.system_mode != "block" or fmt.bos_repeat or fmt.lead or fmt.no_sys_head is not None:
        raise _NoLayout("the tool list layout is supported for templates whose system message is its own block")
    head = None if fmt.default_system is None else fmt.sys_pre + fmt.default_system + fmt.sys_suf
    lines = ["{{- $toolsDone := false }}{{- range $i, $m := .Messages }}"]
    if head is not None:
        lines.append("{{- if and (eq $i 0) (ne .Role \"system\") }}" + lit(head) + "{{ end }}")
    lines += ["{{- if and $.Tools (not $toolsDone) (ne .Role \"system\") }}" + lit(p["pre"]) + "{{ json $.Tools }}"
              + lit(p["post"]) + "{{ $toolsDone = true }}{{ end }}",
              "{{- if eq .Role \"system\" }}" + lit(fmt.sys_pre) + "{{ .Content }}" + lit(fmt.sys_suf),
              "{{- else if eq .Role \"user\" }}" + lit(fmt.user_pre) + "{{ .Content }}" + lit(fmt.user_suf),
              "{{- else if eq .Role \"assistant\" }}" + lit(fmt.asst_pre) + "{{ .Content }}{{ if .ToolCalls }}"
              "{{ if false }}" + lit(p["marker"]) + "{{ end }}{{ end }}" + lit(fmt.asst_suf),
              "{{- else if eq .Role \"tool\" }}" + lit(p["tool_pre"]) + "{{ .Content }}" + lit(p["tool_suf"]),
              "{{- end }}",
              "{{- end }}" + lit(fmt.gen)]
    return "\n".join(line + ('{{ "" }}' if line[-1:].isspace() else "") for line in lines)


def _user_layout(r: _R, fmt: Any) -> dict[str, str]:
    """Calls and results of a template whose tools open the first user turn (Llama 3.1-3.3): a call is its JSON
    alone after the assistant header, a result its own turn (its text written as JSON when the template does)."""
    u = {"role": "user", "content": _U}
    one = {"role": "assistant", "content": "", "calls": [_call(_N1, _ARGS1, "call00001")]}
    two = {"role": "assistant", "content": "", "calls": [_call(_N1, _ARGS1, "call00001"),
                                                         _call(_N2, _ARGS2, "call00002")]}
    res1 = {"role": "tool", "content": _R1, "tool_name": _N1, "call_id": "call00001"}
    res2 = {"role": "tool", "content": _R2, "tool_name": _N2, "call_id": "call00002"}
    a1 = _dump(_ARGS1)
    x = r([u, one, res1, res2], True, what="a tool call and two results")
    quoted = f'"{_R1}"' in x and f'"{_R2}"' in x
    r1, r2 = (f'"{_R1}"', f'"{_R2}"') if quoted else (_R1, _R2)
    _, pre, mid, after, between, tail = _cut(x, [_U, _N1, a1, r1, r2], "a tool call and two results")
    if not pre.startswith(fmt.user_suf + fmt.asst_pre):
        raise _NoLayout("a tool-call turn does not open as a reply does")
    call_pre = pre[len(fmt.user_suf + fmt.asst_pre):]
    if not tail.endswith(fmt.gen):
        raise _NoLayout("the generation prompt after tool results differs")
    res_suf = tail[: len(tail) - len(fmt.gen)]
    if not between.startswith(res_suf):
        raise _NoLayout("tool results are not each their own turn")
    res_pre = between[len(res_suf):]
    if not after.endswith(res_pre):
        raise _NoLayout("tool results are not wrapped alike")
    call_close = after[: len(after) - len(res_pre)]
    if not call_close.endswith(fmt.asst_suf):
        raise _NoLayout("a tool-call turn does not end as a reply does")
    call_suf = call_close[: len(call_close) - len(fmt.asst_suf)]
    single = ""
    try:
        y = r([u, two, res1, res2], True, what="two tool calls")
        _, _, _, call_sep_pre, _, _ = _cut(y, [_U, _N1, a1, _N2, _dump(_ARGS2)], "two tool calls")
        if not call_sep_pre.startswith(call_suf) or not call_sep_pre.endswith(call_pre):
            raise _NoLayout("a second tool call is not written like the first")
        call_sep = call_sep_pre[len(call_suf): len(call_sep_pre) - len(call_pre)]
    except _NoLayout as e:
        if "failed to render" not in str(e):
            raise
        single, call_sep = str(e).split("failed to render: ", 1)[-1], ""
    return {"call_pre": call_pre, "mid": mid, "call_suf": call_suf, "call_sep": call_sep, "res_pre": res_pre,
            "res_suf": res_suf, "res_json": "1" if quoted else "", "single": single}


def _args_cut(text: str, args: dict[str, str], what: str) -> tuple[str, str, dict[str, str]]:
    """``text`` (from a call's name on) cut around its arguments: (between name and arguments, after them, and for
    arguments written one by one, e.g. Qwen3.5's ``<parameter=k>\nv\n</parameter>``, the pieces around each)."""
    dump = _dump(args)
    if dump in text:
        mid, after = _cut(text, [dump], what)
        return mid, after, {}
    (k1, v1), (k2, v2) = args.items()
    to_k1, k1_v1, v1_k2, k2_v2, after_v2 = _cut(text, [k1, v1, k2, v2], what + " (arguments one by one)")
    if k1_v1 != k2_v2:
        raise _NoLayout(f"{what}: arguments are not written alike")
    n = 0
    while n < min(len(to_k1), len(v1_k2)) and to_k1[len(to_k1) - 1 - n] == v1_k2[len(v1_k2) - 1 - n]:
        n += 1
    arg_pre = to_k1[len(to_k1) - n:]
    arg_suf = v1_k2[: len(v1_k2) - n]
    if not after_v2.startswith(arg_suf) or not arg_pre:
        raise _NoLayout(f"{what}: arguments are not written alike")
    return to_k1[: len(to_k1) - n], after_v2[len(arg_suf):], {"arg_pre": arg_pre, "arg_mid": k1_v1,
                                                                "arg_suf": arg_suf}


def _call_pieces(r: _R, fmt: Any) -> dict[str, str]:
    """Pieces of an assistant tool-call turn and of tool results (chatml layout)."""
    u = {"role": "user", "content": _U}
    one = {"role": "assistant", "content": "", "calls": [_call(_N1, _ARGS1, "call00001")]}
    two = {"role": "assistant", "content": "", "calls": [_call(_N1, _ARGS1, "call00001"),
                                                         _call(_N2, _ARGS2, "call00002")]}
    withc = {"role": "assistant", "content": _C, "calls": [_call(_N1, _ARGS1, "call00001")]}
    res1 = {"role": "tool", "content": _R1, "tool_name": _N1, "call_id": "call00001"}
    res2 = {"role": "tool", "content": _R2, "tool_name": _N2, "call_id": "call00002"}
    x = r([u, one, res1], True, what="a tool call and its result")
    _, pre1, from_name = _cut(x, [_U, _N1], "a tool call")
    mid, after, xml = _args_cut(from_name, _ARGS1, "a tool call")
    if not pre1.startswith(fmt.user_suf):
        raise _NoLayout("a tool call turn does not follow the user turn as a reply does")
    opener_pre = pre1[len(fmt.user_suf):]
    y = r([u, two, res1, res2], True, what="two tool calls and their results")
    _, _, from_name = _cut(y, [_U, _N1], "two tool calls")
    mid_y, after_1, xml_y = _args_cut(from_name, _ARGS1, "two tool calls")
    between, from_name2 = _cut(after_1, [_N2], "two tool calls")
    mid_2, after2, xml_2 = _args_cut(from_name2, _ARGS2, "two tool calls")
    if not (mid == mid_y == mid_2 and xml == xml_y == xml_2):
        raise _NoLayout("the second tool call is not written like the first")
    z = r([u, withc, res1], True, what="text and a tool call")
    _, pre_c, post_c = _cut(z, [_U, _C], "text before a tool call")[0:3]
    pre_content = pre_c[len(fmt.user_suf):]
    call_after_content = post_c.split(_N1)[0]
    # after the arguments: call suffix, turn close, result group
    res_block = _cut(after, [_R1], "a tool result")
    res_block2 = _cut(after2, [_R1, _R2], "two tool results")
    return {"opener_pre": opener_pre, "mid": mid, "between": between, "pre_content": pre_content,
            "call_after_content": call_after_content, "after": res_block[0], "res_tail": res_block[1],
            "after2": res_block2[0], "res_between": res_block2[1], "res_tail2": res_block2[2], **xml}


def _split_calls(p: dict[str, str], fmt: Any) -> dict[str, str]:
    """From the raw cuts: the call prefix (marker first), suffix, separators, turn close, result wrappers."""
    # the assistant header is what a call turn with text and one without share; the call prefix follows it
    a, c = p["opener_pre"], p["pre_content"]
    n = 0
    while n < min(len(a), len(c)) and a[n] == c[n]:
        n += 1
    header, call_pre, content_pre = a[:n], a[n:], c[n:]
    if not p["call_after_content"].endswith(call_pre):
        raise _NoLayout("a tool call after text does not start like one without")
    sep_after_content = p["call_after_content"][: len(p["call_after_content"]) - len(call_pre)]
    # after the first call's arguments: call_suf + close + results; between two calls: call_suf + sep + call_pre
    between = p["between"]
    if not between.endswith(call_pre):
        raise _NoLayout("the second tool call does not start like the first")
    suf_sep = between[: len(between) - len(call_pre)]
    after = p["after"]  # call_suf + close + group_open + res_pre
    # the call suffix is the longest common prefix of `after` and `suf_sep`
    k = 0
    while k < min(len(after), len(suf_sep)) and after[k] == suf_sep[k]:
        k += 1
    # prefer a call suffix that ends where the turn's close (asst_suf) starts
    close = fmt.asst_suf
    call_suf = None
    for cut in range(k, -1, -1):
        if after[cut:].startswith(close):
            call_suf = after[:cut]
            break
    if call_suf is None:
        raise _NoLayout("a tool-call turn does not end as a reply does")
    call_sep = suf_sep[len(call_suf):]
    group_open_res_pre = after[len(call_suf) + len(close):]
    res_between = p["res_between"]  # res_suf + [group close/open] + res_pre
    res_tail = p["res_tail"]  # res_suf + group_close + gen
    if not res_tail.endswith(fmt.gen):
        raise _NoLayout("the generation prompt after tool results differs")
    res_suf_close = res_tail[: len(res_tail) - len(fmt.gen)]
    # res_pre: the longest common suffix of group_open_res_pre and res_between
    a, b = group_open_res_pre, res_between
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    res_pre = a[len(a) - n:]
    group_open = a[: len(a) - n]
    inner = b[: len(b) - n]  # between results: res_suf (+ close + open when not shared)
    if not res_suf_close.startswith(inner) and not inner.startswith(""):
        raise _NoLayout("tool results are not wrapped alike")
    # consecutive results share the group when `inner` is a prefix of res_suf + close
    if res_suf_close.startswith(inner):
        res_suf, group_close, shared = inner, res_suf_close[len(inner):], True
    else:
        raise _NoLayout("consecutive tool results are not wrapped as one group")
    if not call_pre.strip():
        raise _NoLayout("a tool call has no text before its name")
    return {"header": header, "content_pre": content_pre, "sep_after_content": sep_after_content,
            "call_pre": call_pre, "mid": p["mid"], "call_suf": call_suf, "call_sep": call_sep,
            "group_open": group_open, "res_pre": res_pre, "res_suf": res_suf, "group_close": group_close,
            "shared": str(shared), **{k: p[k] for k in ("arg_pre", "arg_mid", "arg_suf") if k in p}}


def _thinking(r: _R, fmt: Any) -> dict[str, str]:
    """Thinking switches: text the generation prompt gains when thinking is off / on, and how an earlier reply's
    reasoning is written (kept after the last user message only, always, or never)."""
    u = [{"role": "user", "content": _U}]
    out: dict[str, Any] = {"gen_on": None, "gen_off": None, "keep": "never", "think_pre": "", "think_suf": "",
                           "empty": False}
    base = r(u, True, what="a user message")
    for flag in (False, True):
        t = r(u, True, think=flag, what="thinking " + ("on" if flag else "off"))
        if t != base:
            head, tail = _cut(t, [_U], "thinking " + ("on" if flag else "off"))
            if head != _cut(base, [_U], "a user message")[0] or not tail.startswith(fmt.user_suf):
                raise _NoLayout("the thinking switch changes more than the generation prompt")
            out["gen_on" if flag else "gen_off"] = tail[len(fmt.user_suf):]
    reply = {"role": "assistant", "content": _C, "thinking": _TH}
    last = r([u[0], reply], False, what="a reply with reasoning")
    earlier = r([u[0], reply, {"role": "user", "content": _U2}], True, what="an earlier reply with reasoning")
    if _TH in last:
        pre, suf = _cut(last, [_TH, _C], "reasoning")[1:3]
        out["think_pre"] = _cut(last, [_U], "")[1].split(_TH)[0][len(fmt.user_suf) + len(fmt.asst_pre):]
        out["think_suf"] = pre
        del suf
        out["keep"] = "always" if _TH in earlier else "after_last_user"
        # Qwen3.5 writes the (empty) think block for every reply after the last user message (a reply that is not
        # the last message: Qwen3 writes it for the last one only)
        try:
            plain = r([u[0], {"role": "assistant", "content": _C}, {"role": "tool", "content": _R1, "tool_name": _N1,
                                                                      "call_id": "call00001"}], False, what="a reply")
            lead = _cut(plain, [_U, _C], "a reply")[1][len(fmt.user_suf) + len(fmt.asst_pre):]
        except _NoLayout:
            lead = ""
        out["empty"] = lead == out["think_pre"] + out["think_suf"] and bool(lead)
    elif _TH in earlier:
        raise _NoLayout("earlier reasoning is kept only before a later user message")
    return out


def infer(template: str, fmt: Any, bos: str, eos: str, strip_bos: bool) -> ToolParts | None:
    """The tool/thinking parts of ``template`` (None when it renders nothing for tools, tool calls or thinking).
    Raises :class:`_NoLayout` when it has them in a shape no layout fits."""
    r = _R(template, bos, eos, strip_bos)
    u = [{"role": "user", "content": _U}]
    plain = r(u, True, what="a user message")
    try:
        with_tools = r(u, True, _STOOLS, what="a user message with tools")
    except _NoLayout:
        with_tools = None
    parts = ToolParts("chatml" if fmt.system_mode == "block" else "llama3-json")
    has_tools = with_tools is not None and with_tools != plain
    if has_tools and fmt.system_mode == "fold_last":
        parts.layout = "last-user-turn"
        parts.pieces.update(_last_user_layout(r, fmt))
    elif has_tools:
        placement = "system" if fmt.system_mode == "block" and _tool_in_system(r, fmt) else "user"
        parts.layout = "chatml" if placement == "system" else "llama3-json"
        try:
            parts.pieces.update(_tools_block(r, fmt, placement))
        except _NoLayout as e:
            if placement != "system":
                raise
            try:  # Granite 3.x: the whole list in a turn of its own
                parts.layout, parts.pieces = "tools-list", _list_layout(r, fmt, template)
            except _NoLayout:
                raise e from None
        if parts.layout == "chatml":
            parts.pieces.update(_split_calls(_call_pieces(r, fmt), fmt))
        elif parts.layout == "llama3-json":
            parts.pieces.update(_user_layout(r, fmt))
    thinking = _thinking(r, fmt)
    parts.flags.update(thinking)
    parts.flags["tools"] = has_tools
    if not has_tools and thinking["gen_on"] is None and thinking["gen_off"] is None and thinking["keep"] == "never":
        return None
    return parts


def _tool_in_system(r: _R, fmt: Any) -> bool:
    """Whether the tools block sits in the system turn (before the first user turn's header) rather than opening the
    first user turn."""
    out = r([{"role": "system", "content": _S}, {"role": "user", "content": _U}], False, _STOOLS, what="tools")
    first = out.find("Zq8toolA")
    opens_user_turn = bool(fmt.user_pre) and out.rfind(fmt.user_pre, 0, first) > out.find(_S) >= 0
    return 0 <= first < out.find(_U) and not opens_user_turn


# -- the Go template --------------------------------------------------------------------------------------------------
def go_template(fmt: Any, parts: ToolParts, lit: Any) -> str:
    """The whole TEMPLATE for a template with tools and/or thinking (``lit`` quotes literal text)."""
    if parts.layout == "llama3-json" and parts.flags.get("tools"):
        return _go_user_layout(fmt, parts, lit)
    if parts.layout == "last-user-turn" and parts.flags.get("tools"):
        return _go_last_user_layout(fmt, parts, lit)
    if parts.layout == "tools-list":
        return _go_list_layout(fmt, parts, lit)
    if fmt.system_mode != "block" or fmt.bos_repeat or fmt.lead or fmt.no_sys_head is not None:
        raise _NoLayout("tool calls are supported for templates whose system message is its own block")
    p, f = parts.pieces, parts.flags
    lines = ["{{- $lastUser := -1 }}{{- $sys := \"\" }}{{- $hasSys := false }}{{- range $i, $m := .Messages }}"
             "{{ if eq .Role \"user\" }}{{ $lastUser = $i }}{{ end }}{{ if and (eq $i 0) (eq .Role \"system\") }}"
             "{{ $hasSys = true }}{{ $sys = .Content }}{{ end }}{{ end }}"]
    head = None if fmt.default_system is None else fmt.sys_pre + fmt.default_system + fmt.sys_suf
    if f.get("tools"):
        tools_loop = "{{ range .Tools }}" + lit(p["tool_sep"]) + (
            "{{ . }}" if p["tool_key"] == "tool" else "{{ json .Function }}") + "{{ end }}"
        if "sys_after" in p:
            lines.append("{{- if .Tools }}" + lit(p["p"]) + tools_loop + lit(p["post"]) + "{{ if $hasSys }}"
                         + lit(p["sys_after"]) + "{{ $sys }}{{ end }}" + lit(p["sys_end"]) + "{{ end }}")
        else:
            lines.append("{{- if .Tools }}" + lit(p["p"]) + "{{ if $hasSys }}{{ $sys }}" + lit(p["q"]) + "{{ else }}"
                         + lit(p["d"]) + "{{ end }}" + lit(p["r"]) + tools_loop + lit(p["post"]) + "{{ end }}")
    lines.append("{{- $prev := \"\" }}{{- range $i, $m := .Messages }}")
    if f.get("tools"):
        lines.append("{{- if and (eq $prev \"tool\") (ne .Role \"tool\") }}" + lit(p["group_close"]) + "{{ end }}")
    skip_first = "(and $.Tools (eq $i 0))" if f.get("tools") else "false"
    if head is not None:
        lines.append("{{- if and (eq $i 0) (ne .Role \"system\") (not $.Tools) }}" + lit(head) + "{{ end }}")
    lines.append("{{- if eq .Role \"system\" }}{{ if not " + skip_first + " }}" + lit(fmt.sys_pre) + "{{ .Content }}"
                 + lit(fmt.sys_suf) + "{{ end }}")
    lines.append("{{- else if eq .Role \"user\" }}" + lit(fmt.user_pre) + "{{ .Content }}" + lit(fmt.user_suf))
    think = ""
    if f["keep"] == "never" and (f["gen_on"] is not None or f["gen_off"] is not None):
        tags = _switch_tags(fmt.gen, f)
        if tags:
            # renders nothing (earlier reasoning is dropped, as the template does); Ollama reads the tags around
            # .Thinking to see thinking support and to split a reply's reasoning from its answer
            think = "{{ if false }}" + lit(tags[0]) + "{{ .Thinking }}" + lit(tags[1]) + "{{ end }}"
    if f["keep"] != "never":
        cond = "(gt $i $lastUser)" if f["keep"] == "after_last_user" else "true"
        think = "{{ if and " + cond + (" }}" if f["empty"] else " .Thinking }}") + lit(f["think_pre"]) \
            + "{{ .Thinking }}" + lit(f["think_suf"]) + "{{ end }}"
    asst = "{{- else if eq .Role \"assistant\" }}" + lit(fmt.asst_pre) + think + "{{ .Content }}"
    if f.get("tools"):
        # the call text comes first inside {{ if .ToolCalls }}: Ollama takes its tool-call tag from there
        header = fmt.asst_pre + (f["think_pre"] + f["think_suf"] if f["empty"] else "")
        if p["header"] != header or p["content_pre"]:
            raise _NoLayout("a tool-call turn opens differently from a reply; Ollama's tool-call tag would not be "
                            "the call's marker")
        asst += ("{{ $content := .Content }}{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}"
                 + "{{ if $j }}" + lit(p["call_sep"] + p["call_pre"]) + "{{ else if $content }}"
                 + lit(p["sep_after_content"] + p["call_pre"]) + "{{ else }}" + lit(p["call_pre"]) + "{{ end }}"
                 + "{{ .Function.Name }}" + lit(p["mid"]) + _go_args(p, lit) + lit(p["call_suf"])
                 + "{{ end }}{{ end }}")
    asst += lit(fmt.asst_suf)
    lines.append(asst)
    if f.get("tools"):
        lines.append("{{- else if eq .Role \"tool\" }}{{ if ne $prev \"tool\" }}" + lit(p["group_open"])
                     + "{{ end }}" + lit(p["res_pre"]) + "{{ .Content }}" + lit(p["res_suf"]))
    lines.append("{{- end }}{{ $prev = .Role }}")
    close = ("{{ if eq $prev \"tool\" }}" + lit(p["group_close"]) + "{{ end }}") if f.get("tools") else ""
    lines.append("{{- end }}" + close + _think_gen(fmt.gen, f, lit))
    return "\n".join(line + ('{{ "" }}' if line[-1:].isspace() else "") for line in lines)


_TAG_AT_END = re.compile(r"(<[A-Za-z_][\w.\-]*>|<\|[^|\s<>]+\|>)\s*$")


def _go_args(p: dict[str, str], lit: Any) -> str:
    """A call's arguments: the JSON object, or one by one (strings and numbers as text, Python's True/False for
    booleans, objects and lists as JSON: what Jinja's ``| string`` / ``| tojson`` write)."""
    if "arg_pre" not in p:
        return "{{ .Function.Arguments }}"
    return ("{{ range $k, $v := .Function.Arguments }}" + lit(p["arg_pre"]) + "{{ $k }}" + lit(p["arg_mid"])
            + "{{ $t := printf \"%T\" $v }}{{ if eq $t \"bool\" }}{{ if $v }}True{{ else }}False{{ end }}"
            "{{ else if or (eq $t \"map[string]interface {}\") (eq $t \"[]interface {}\") }}{{ json $v }}"
            "{{ else }}{{ $v }}{{ end }}" + lit(p["arg_suf"]) + "{{ end }}")


def _switch_tags(gen: str, f: dict[str, Any]) -> tuple[str, str] | None:
    """The reasoning tags of a template with a thinking switch but no earlier reasoning: the tag the prompt ends
    with when thinking is on, and the text that thinking off adds after it (DeepSeek-R1: <think> and </think>)."""
    on = gen if f["gen_on"] is None else f["gen_on"]
    off = gen if f["gen_off"] is None else f["gen_off"]
    m = _TAG_AT_END.search(on)
    close = off[len(on):].strip() if off.startswith(on) else ""
    if m is None or not close:
        return None
    return m.group(1), close


def _go_user_layout(fmt: Any, parts: ToolParts, lit: Any) -> str:
    """Tools in the first user turn, one JSON call per assistant turn, each result its own turn."""
    if fmt.system_mode != "block" or fmt.bos_repeat or fmt.lead or fmt.no_sys_head is not None:
        raise _NoLayout("tools in the first user turn are supported for templates whose system message is its "
                        "own block")
    p, f = parts.pieces, parts.flags
    if f["keep"] != "never" or f["gen_on"] is not None or f["gen_off"] is not None:
        raise _NoLayout("thinking together with tools in the first user turn is not supported")
    head = None if fmt.default_system is None else fmt.sys_pre + fmt.default_system + fmt.sys_suf
    head_t = p["head_t"]
    lines = ["{{- $toolsDone := false }}{{- range $i, $m := .Messages }}"]
    if head is not None:
        lines.append("{{- if and (eq $i 0) (ne .Role \"system\") }}{{ if $.Tools }}" + lit(head_t) + "{{ else }}"
                     + lit(head) + "{{ end }}{{ end }}")
    elif head_t:
        lines.append("{{- if and (eq $i 0) (ne .Role \"system\") $.Tools }}" + lit(head_t) + "{{ end }}")
    lines.append("{{- if eq .Role \"system\" }}{{ if $.Tools }}" + lit(p["sys_pre_t"]) + "{{ else }}"
                 + lit(fmt.sys_pre) + "{{ end }}{{ .Content }}" + lit(fmt.sys_suf))
    lines.append("{{- else if eq .Role \"user\" }}" + lit(fmt.user_pre) + "{{ if and $.Tools (not $toolsDone) }}"
                 + lit(p["tools_pre"]) + "{{ range $.Tools }}" + lit(p["tool_sep"])
                 + ("{{ . }}" if p["tool_key"] == "tool" else "{{ json .Function }}") + "{{ end }}" + lit(p["post"])
                 + "{{ $toolsDone = true }}{{ end }}{{ .Content }}" + lit(fmt.user_suf))
    single = ""
    if p["single"]:
        single = "{{ if gt (len .ToolCalls) 1 }}{{ slice " + _go_str(p["single"]) + " 0 100000 }}{{ end }}"
    lines.append("{{- else if eq .Role \"assistant\" }}" + lit(fmt.asst_pre) + single + "{{ if .ToolCalls }}"
                 "{{ range $j, $c := .ToolCalls }}{{ if $j }}" + lit(p["call_sep"] + p["call_pre"]) + "{{ else }}"
                 + lit(p["call_pre"]) + "{{ end }}{{ .Function.Name }}" + lit(p["mid"]) + "{{ .Function.Arguments }}"
                 + lit(p["call_suf"]) + "{{ end }}{{ else }}{{ .Content }}{{ end }}" + lit(fmt.asst_suf))
    lines.append("{{- else if eq .Role \"tool\" }}" + lit(p["res_pre"])
                 + ("{{ json .Content }}" if p["res_json"] else "{{ .Content }}") + lit(p["res_suf"]))
    lines.append("{{- end }}")
    lines.append("{{- end }}" + lit(fmt.gen))
    return "\n".join(line + ('{{ "" }}' if line[-1:].isspace() else "") for line in lines)


def _go_last_user_layout(fmt: Any, parts: ToolParts, lit: Any) -> str:
    """Tools before the last user turn, the system text folded into the last message when it is a user turn, calls
    as one list, results carrying their call's id (Mistral Nemo)."""
    p, f = parts.pieces, parts.flags
    if f["keep"] != "never" or f["gen_on"] is not None or f["gen_off"] is not None or fmt.bos_repeat or fmt.lead:
        raise _NoLayout("this tools layout is supported without thinking, BOS per turn or fixed opening text")
    tool = "{{ $t }}"  # the tool as JSON; or written as the template joins it, the description as it is
    if "raw_a" in p:
        tool = (lit(p["raw_a"]) + "{{ $t.Function.Name }}" + lit(p["raw_b"]) + "{{ $t.Function.Description }}"
                + lit(p["raw_c"]) + "{{ json $t.Function.Parameters }}" + lit(p["raw_d"]))
    lines = ["{{- $lastUser := -1 }}{{- $hasSys := false }}{{- $sys := \"\" }}{{- range $i, $m := .Messages }}"
             "{{ if eq .Role \"user\" }}{{ $lastUser = $i }}{{ end }}{{ end }}",
             "{{- range $i, $m := .Messages }}",
             "{{- if eq .Role \"system\" }}{{ $hasSys = true }}{{ $sys = .Content }}",
             "{{- else if eq .Role \"user\" }}{{ if and $.Tools (eq $i $lastUser) }}" + lit(p["tools_pre"])
             + "{{ range $j, $t := $.Tools }}{{ if $j }}" + lit(p["tool_sep"]) + "{{ end }}" + tool + "{{ end }}"
             + lit(p["tools_post"]) + "{{ end }}" + lit(fmt.user_pre)
             + "{{ if and $hasSys (eq (len (slice $.Messages $i)) 1) }}" + lit(fmt.sys_pre) + "{{ $sys }}"
             + lit(fmt.sys_suf) + "{{ end }}{{ .Content }}" + lit(fmt.user_suf),
             "{{- else if eq .Role \"assistant\" }}{{ if .ToolCalls }}" + lit(p["calls_open"])
             + "{{ range $j, $c := .ToolCalls }}{{ if $j }}" + lit(p["call_sep"] + p["call_pre"]) + "{{ else }}"
             + lit(p["call_pre"]) + "{{ end }}{{ .Function.Name }}" + lit(p["mid"]) + "{{ .Function.Arguments }}"
             + lit(p["mid_id"]) + "{{ .ID }}" + lit(p["call_suf"]) + "{{ end }}" + lit(p["calls_close"])
             + "{{ else }}" + lit(fmt.asst_pre) + "{{ .Content }}" + lit(fmt.asst_suf) + "{{ end }}",
             "{{- else if eq .Role \"tool\" }}" + lit(p["res_pre"]) + "{{ .Content }}" + lit(p["res_mid"])
             + "{{ .ToolCallID }}" + lit(p["res_suf"]),
             "{{- end }}",
             "{{- end }}" + lit(fmt.gen)]
    return "\n".join(line + ('{{ "" }}' if line[-1:].isspace() else "") for line in lines)


def _go_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=True).replace("<", "\\u003c")


def _think_gen(gen: str, f: dict[str, Any], lit: Any) -> str:
    """The generation prompt: as without the think flag, or as the template writes it with thinking on / off."""
    on = gen if f["gen_on"] is None else f["gen_on"]
    off = gen if f["gen_off"] is None else f["gen_off"]
    if on == gen and off == gen:
        return lit(gen)
    return ("{{ if .IsThinkSet }}{{ if .Think }}" + lit(on) + "{{ else }}" + lit(off) + "{{ end }}{{ else }}"
            + lit(gen) + "{{ end }}")


@dataclass
class ToolResult:
    """What :func:`translate_tools` decided: the TEMPLATE with tools/thinking (or None) and how exact it is."""

    go_template: str | None
    status: str  # "none" (nothing to do), "exact", "exact but JSON whitespace", "refused"
    reason: str = ""
    layout: str = ""
    note: str = ""  # what Ollama does not do with this TEMPLATE's tool calls (arguments not as JSON)
    stops: list[str] | None = None  # the layout's own end-of-reply strings (Harmony), replacing the plain ones


def cases_for(go_tpl: str) -> list[Case]:
    """The tool suite's cases that apply to ``go_tpl``: without ``.Tools`` in it, Ollama refuses requests with tools
    ("does not support tools"), so only the thinking cases remain."""
    if HARMONY_MARK in go_tpl:
        return harmony_cases()
    if ".Tools" in go_tpl:
        return tool_suite()
    return [c for c in tool_suite()
            if not c.tools and not any(m.get("calls") or m["role"] == "tool" for m in c.messages)]


def verify(template: str, go_tpl: str, bos: str, eos: str, strip_bos: bool, system: str | None,
           cases: list[Case] | None = None, tool_template: str | None = None) -> tuple[bool, str]:
    """Render the tool suite with Jinja and with ``go_tpl``; (whether any JSON whitespace differs, problem or "")."""
    any_ws = False
    for case in cases or cases_for(go_tpl):
        try:
            want = jinja_render(template, case, bos, eos, system, tool_template)
        except ForgeError as e:
            want_err = str(e)
            want = None
        if want is not None and strip_bos and bos and want.startswith(bos):
            want = want[len(bos):]
        try:
            got = go_render(go_tpl, case, system)
        except gotemplate.GoTemplateError as e:
            if want is None:
                continue  # both refuse it (e.g. a template that allows one tool call per turn)
            return any_ws, f"'{case.name}': the Go template fails ({e})"
        if want is None:
            return any_ws, f"'{case.name}': the chat template refuses it ({want_err}) but the Go template renders it"
        same, ws = same_but_json_whitespace(want, got)
        if not same:
            return any_ws, f"'{case.name}': {first_difference(want, got)}"
        any_ws = any_ws or ws
    return any_ws, ""


def _marker_problem(template: str, go_tpl: str) -> str:
    """"" when the tag Ollama derives from ``go_tpl`` (:func:`.gotemplate.tool_call_tag`) starts with the marker a
    model trained on ``template`` starts its calls with (:mod:`.markers`); else why Ollama would miss the calls."""
    if ".ToolCalls" not in go_tpl:
        return ""
    fmt = markers.detect_format(template)
    tag = gotemplate.tool_call_tag(go_tpl)
    if fmt is not None and not markers.starts_with_marker(tag, fmt):
        return (f"Ollama would look for tool calls after {tag!r} while the model starts them with "
                f"{' or '.join(markers.start_markers(fmt))!r}")
    return ""


def translate_tools(template: str, fmt: Any, *, bos: str, eos: str, strip_bos: bool, system: str | None,
                    lit: Any) -> ToolResult:
    """The tool/thinking TEMPLATE for ``template`` proven on :func:`tool_suite`, or why it cannot be written."""
    if markers.detect_format(template) == "harmony":
        return translate_harmony(template, bos=bos, eos=eos, strip_bos=strip_bos, system=system, lit=lit)
    try:
        parts = infer(template, fmt, bos, eos, strip_bos)
    except _NoLayout as e:
        return ToolResult(None, "refused", f"its tool format fits no layout a Go template can reproduce ({e})")
    if parts is None:
        return ToolResult(None, "none")
    try:
        go_tpl = go_template(fmt, parts, lit)
    except _NoLayout as e:
        return ToolResult(None, "refused", str(e), parts.layout)
    ws, problem = verify(template, go_tpl, bos, eos, strip_bos, system)
    if problem:
        return ToolResult(None, "refused", f"the Go template would differ on {problem}", parts.layout)
    problem = _marker_problem(template, go_tpl)
    if problem:
        return ToolResult(None, "refused", problem, parts.layout)
    note = ""
    if "arg_pre" in parts.pieces:
        note = ("tool calls in replies write their arguments one by one (<function=...><parameter=...>), not as JSON: "
                "Ollama's tool parser derived from this TEMPLATE finds the call's tag and name but reads JSON "
                "arguments only; Ollama's built-in parser for this format is chosen with PARSER (e.g. qwen3.5)")
    return ToolResult(go_tpl, "exact but JSON whitespace" if ws else "exact", "", parts.layout, note)


# -- a separate tool_use template (Hermes 2 Pro) ---------------------------------------------------------------------
# A model can ship two templates, ``default`` and ``tool_use``; transformers and llama.cpp render the ``tool_use`` one
# when a request has tools. The TEMPLATE does the same: ``{{ if .Tools }}`` the tool_use layout ``{{ else }}`` the
# default template's. The tool_use layout (Hermes): a fixed system turn listing each tool as a JSON-like object whose
# description is a Python-style signature and an ``Args:`` list (types mapped by the template's own macro), then the
# messages as turns, calls as marker + JSON, results grouped in one turn whose closing depends on what follows.
_JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array")


def _seq(text: str, marks: list[str], what: str) -> list[str]:
    """``text`` cut at each mark in turn (each searched after the previous one)."""
    parts, pos = [], 0
    for m in marks:
        i = text.find(m, pos)
        if i < 0:
            raise _NoLayout(f"{what}: {m!r} not found where expected")
        parts.append(text[pos:i])
        pos = i + len(m)
    parts.append(text[pos:])
    return parts


def _ptool(name: str, desc: str, props: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "required": list(props)[:1], "properties": props}}}


def _common_prefix(items: list[str]) -> str:
    n = 0
    while all(len(s) > n for s in items) and len({s[n] for s in items}) == 1:
        n += 1
    return items[0][:n]


def _tool_use_parts(r: _R, fmt: Any) -> dict[str, Any]:
    u = {"role": "user", "content": _U}
    turn = fmt.user_pre + _U + fmt.user_suf + fmt.gen

    def block(tools_: list[dict[str, Any]], what: str) -> str:
        out = r([u], True, tools_, what=what)
        if not out.endswith(turn):
            raise _NoLayout(f"{what}: the tools block is not followed by the user turn")
        return out[: len(out) - len(turn)]

    # one property of each JSON type: the template's name for each type
    sig, arg = {}, {}
    for t in _JSON_TYPES:
        b = block([_ptool("Zq8toolA", "Zq8descA", {"Zq8p": {"type": t, "description": "Zq8pd"}})], f"a {t} parameter")
        _, _, _, s, _, a, _, _ = _seq(b, ["Zq8toolA", "Zq8toolA", "Zq8p", "Zq8descA", "Zq8p", "Zq8pd",
                                          _dump({"type": "object", "required": ["Zq8p"], "properties": {
                                              "Zq8p": {"type": t, "description": "Zq8pd"}}})], f"a {t} parameter")
        sig[t], arg[t] = s, a
    sig_mid, arg_mid = _common_prefix(list(sig.values())), _common_prefix(list(arg.values()))
    sig_close = _common_prefix([s[::-1] for s in sig.values()])[::-1]
    arg_suf = _common_prefix([a[::-1] for a in arg.values()])[::-1]
    types = {t: s[len(sig_mid): len(s) - len(sig_close)] for t, s in sig.items()}
    if any(arg[t] != arg_mid + types[t] + arg_suf or not types[t] for t in _JSON_TYPES):
        raise _NoLayout("the parameter types are not written alike in the signature and the argument list")
    # two tools with two parameters each
    two = {"Zq8p": {"type": "string", "description": "Zq8pd"}, "Zq8q": {"type": "string", "description": "Zq8qd"}}
    tools2 = [_ptool("Zq8toolA", "Zq8descA", two), _ptool("Zq8toolB", "Zq8descB", two)]
    b = block(tools2, "two tools")
    params = _dump(tools2[0]["function"]["parameters"])
    marks = ["Zq8toolA", "Zq8toolA", "Zq8p", "Zq8q", "Zq8descA", "Zq8p", "Zq8pd", "Zq8q", "Zq8qd", params]
    a = _seq(b, marks + [m.replace("Zq8toolA", "Zq8toolB").replace("Zq8descA", "Zq8descB") for m in marks],
             "two tools")
    pre, t1, sig_open, sig_sep_full, sig_close_full, desc_args, a_mid1, line_sep, a_mid2, g, between = a[:11]
    if a[11:20] != [t1, sig_open, sig_sep_full, sig_close_full, desc_args, a_mid1, line_sep, a_mid2, g]:
        raise _NoLayout("the second tool is not written like the first")
    after = a[20]
    st = types["string"]
    if not (sig_sep_full.startswith(sig_mid + st) and sig_close_full == sig_mid + st + sig_close
            and a_mid1 == a_mid2 == arg_mid + st + arg_suf):
        raise _NoLayout("the signature is not written parameter by parameter")
    sig_sep = sig_sep_full[len(sig_mid + st):]
    # no parameters: what follows the description, and what stands for the parameters
    b0 = block([_ptool("Zq8toolA", "Zq8descA", {})], "a tool without parameters")
    z = _seq(b0, ["Zq8toolA", "Zq8toolA", "Zq8descA"], "a tool without parameters")
    if z[0] != pre or z[1] != t1 or z[2] != sig_open + sig_close or not z[3].endswith(after):
        raise _NoLayout("a tool without parameters is not written like the others")
    zero = z[3][: len(z[3]) - len(after)]
    # zero == desc_suf + g + empty_params + tool_end, desc_args == desc_suf + args_head + line_pre
    if not line_sep or not desc_args.endswith(line_sep):
        raise _NoLayout("the argument list is not one line per parameter")
    line_pre = line_sep
    k = len(_common_prefix([zero, desc_args]))
    desc_suf, args_head = desc_args[:k], desc_args[k: len(desc_args) - len(line_pre)]
    rest0 = zero[k:]
    if not rest0.startswith(g):
        raise _NoLayout("a tool without parameters is not written like the others")
    return {"pre": pre, "t1": t1, "sig_open": sig_open, "sig_mid": sig_mid, "sig_sep": sig_sep,
            "sig_close": sig_close, "desc_suf": desc_suf, "args_head": args_head, "line_pre": line_pre,
            "arg_mid": arg_mid, "arg_suf": arg_suf, "g": g, "empty_tail": rest0[len(g):], "between": between,
            "after": after, "types": types}


def _tool_use_turns(r: _R, fmt: Any) -> dict[str, str]:
    """Calls and results in the tool_use template (rendered with tools, after its tools block)."""
    u, u2 = {"role": "user", "content": _U}, {"role": "user", "content": _U2}
    two = {"role": "assistant", "content": "", "calls": [_call(_N1, _ARGS1, "call00001"),
                                                         _call(_N2, _ARGS2, "call00002")]}
    res1 = {"role": "tool", "content": _R1, "tool_name": _N1, "call_id": "call00001"}
    res2 = {"role": "tool", "content": _R2, "tool_name": _N2, "call_id": "call00002"}
    y = r([u, two, res1, res2], True, _STOOLS, what="two tool calls and two results")
    y2 = r([u, two, res1, res2, u2], True, _STOOLS, what="tool results and a next question")
    _, pre, mid, between, mid2, after2, r_between, tail = _seq(
        y, [_U, _N1, _dump(_ARGS1), _N2, _dump(_ARGS2), _R1, _R2], "two tool calls and two results")
    if mid != mid2 or not pre.startswith(fmt.user_suf):
        raise _NoLayout("the second tool call is not written like the first")
    pre = pre[len(fmt.user_suf):]
    n = len(_common_prefix([pre[::-1], between[::-1]]))
    call_pre, opener = pre[len(pre) - n:], pre[: len(pre) - n]
    call_suf = between[: len(between) - n]
    if not call_pre.strip() or not after2.startswith(call_suf):
        raise _NoLayout("tool calls are not written alike")
    close_open = after2[len(call_suf):]  # turn close + group open + result prefix
    m = len(_common_prefix([close_open[::-1], r_between[::-1]]))
    res_pre = close_open[len(close_open) - m:]
    if not tail.endswith(fmt.gen):
        raise _NoLayout("the generation prompt after tool results differs")
    last = tail[: len(tail) - len(fmt.gen)]
    next_other = _seq(y2, [_R2, fmt.user_pre + _U2], "tool results and a next question")[1]
    close_group = close_open[: len(close_open) - m]
    if not close_group.startswith(fmt.asst_suf):
        raise _NoLayout("a tool-call turn does not end as a reply does")
    return {"opener": opener, "call_pre": call_pre, "mid": mid, "call_suf": call_suf,
            "group_open": close_group[len(fmt.asst_suf):], "res_pre": res_pre,
            "next_tool": r_between[: len(r_between) - m], "last": last, "next_other": next_other}


def _go_type(types: dict[str, str], var: str, lit: Any) -> str:
    out = "{{ $ty := json " + var + ".Type }}"
    for i, t in enumerate(_JSON_TYPES):
        out += ("{{ if " if i == 0 else "{{ else if ") + "eq $ty " + _go_str(json.dumps(t)) + " }}" + lit(types[t])
    # any other type (a list of types, none): the chat template's macro writes something Ollama's data cannot
    # reproduce; an execution error (the request fails) instead of a different prompt
    return out + "{{ else }}{{ slice " + _go_str("a parameter type the chat template writes differently") \
        + " 0 100000 }}{{ end }}"


def go_tool_use(fmt: Any, tp: dict[str, Any], tt: dict[str, str], plain_go: str, lit: Any) -> str:
    """``{{ if .Tools }}`` the tool_use template's layout ``{{ else }}`` the default template's TEMPLATE."""
    props = ".Function.Parameters.Properties"
    tool = ("{{ .Function.Name }}" + lit(tp["t1"]) + "{{ .Function.Name }}" + lit(tp["sig_open"])
            + "{{ $first := true }}{{ range $k, $v := " + props + " }}{{ if not $first }}" + lit(tp["sig_sep"])
            + "{{ end }}{{ $first = false }}{{ $k }}" + lit(tp["sig_mid"]) + _go_type(tp["types"], "$v", lit)
            + "{{ end }}" + lit(tp["sig_close"]) + "{{ .Function.Description }}" + lit(tp["desc_suf"])
            + "{{ $first = true }}{{ range $k, $v := " + props + " }}{{ if $first }}" + lit(tp["args_head"])
            + "{{ end }}{{ $first = false }}" + lit(tp["line_pre"]) + "{{ $k }}" + lit(tp["arg_mid"])
            + _go_type(tp["types"], "$v", lit) + lit(tp["arg_suf"]) + "{{ $v.Description }}{{ end }}"
            + lit(tp["g"]) + "{{ if " + props + " }}{{ json .Function.Parameters }}{{ else }}"
            + lit(tp["empty_tail"]) + "{{ end }}")
    lines = ["{{- if .Tools }}" + lit(tp["pre"]) + "{{ range $i, $t := .Tools }}{{ if $i }}" + lit(tp["between"])
             + "{{ end }}" + tool + "{{ end }}" + lit(tp["after"]),
             "{{- $prev := \"\" }}{{- range $i, $m := $.Messages }}{{ $rest := slice $.Messages $i }}",
             "{{- if eq .Role \"system\" }}" + lit(fmt.sys_pre) + "{{ .Content }}" + lit(fmt.sys_suf),
             "{{- else if eq .Role \"user\" }}" + lit(fmt.user_pre) + "{{ .Content }}" + lit(fmt.user_suf),
             # the turn's opening sits before the {{ if .ToolCalls }} (through a variable): Ollama's tool-call tag is
             # the first text inside that if, which must be the call's marker
             "{{- else if eq .Role \"assistant\" }}{{ $calls := .ToolCalls }}{{ if $calls }}" + lit(tt["opener"])
             + "{{ else }}" + lit(fmt.asst_pre) + "{{ .Content }}" + lit(fmt.asst_suf) + "{{ end }}"
             + "{{ if .ToolCalls }}{{ range .ToolCalls }}" + lit(tt["call_pre"]) + "{{ .Function.Name }}"
             + lit(tt["mid"]) + "{{ .Function.Arguments }}" + lit(tt["call_suf"]) + "{{ end }}"
             + lit(fmt.asst_suf) + "{{ end }}",
             "{{- else if eq .Role \"tool\" }}{{ if and $i (ne $prev \"tool\") }}" + lit(tt["group_open"])
             + "{{ end }}" + lit(tt["res_pre"]) + "{{ .Content }}{{ if eq (len $rest) 1 }}" + lit(tt["last"])
             + "{{ else }}{{ $next := index $rest 1 }}{{ if eq $next.Role \"tool\" }}" + lit(tt["next_tool"])
             + "{{ else }}" + lit(tt["next_other"]) + "{{ end }}{{ end }}",
             "{{- end }}{{ $prev = .Role }}",
             "{{- end }}" + lit(fmt.gen),
             "{{- else }}" + plain_go + "{{ end }}"]
    return "\n".join(line + ('{{ "" }}' if line[-1:].isspace() else "") for line in lines)


def translate_tool_use(template: str, tool_template: str, fmt: Any, plain_go: str, *, bos: str, eos: str,
                       strip_bos: bool, system: str | None, lit: Any) -> ToolResult:
    """The TEMPLATE for a model that ships a separate ``tool_use`` template, proven on :func:`tool_suite` (cases with
    tools against the tool_use template, the others against the default one), or why it cannot be written."""
    r = _R(tool_template, bos, eos, strip_bos)
    try:
        tp = _tool_use_parts(r, fmt)
        tt = _tool_use_turns(r, fmt)
    except _NoLayout as e:
        return ToolResult(None, "refused", f"its tool_use template fits no layout a Go template can reproduce ({e})")
    go_tpl = go_tool_use(fmt, tp, tt, plain_go, lit)
    ws, problem = verify(template, go_tpl, bos, eos, strip_bos, system, tool_template=tool_template)
    if problem:
        return ToolResult(None, "refused", f"the Go template would differ on {problem}", "tool_use")
    problem = _marker_problem(tool_template, go_tpl)
    if problem:
        return ToolResult(None, "refused", problem, "tool_use")
    return ToolResult(go_tpl, "exact but JSON whitespace" if ws else "exact", "", "tool_use")


# -- Harmony (gpt-oss) ------------------------------------------------------------------------------------------------
# The Harmony template writes: a fixed system turn (identity, dates, "Reasoning: <effort>", the channels line, one more
# line when there are tools); a developer turn with the first system message as instructions and the tools as a
# TypeScript namespace whose parameter types come from a recursive macro over the JSON schema; user turns; a reply as
# a final-channel message (its reasoning dropped); a tool call as ``to=functions.NAME`` on the commentary channel with
# the JSON arguments (only the first call of a message), preceded by its reasoning on the analysis channel unless a
# later reply exists; a result as ``functions.NAME to=assistant`` with the content as a JSON string, NAME being the
# previous call's. The TEMPLATE does the same, the types with ``{{ define }}`` / ``{{ template }}`` over Ollama's
# ``api.ToolProperty`` (``Type``, ``Items`` as raw JSON, ``Enum``, ``Properties.ToMap``, ``Required``), the effort
# from ``.ThinkLevel`` (Ollama: "low"/"medium"/"high"; "medium" for think=true; empty when unset or false: then the
# template's default). Every literal is cut from renderings of the model's template with sentinels.
_HU, _HU2, _HS, _HC, _HEFF = "Zq8hUSER", "Zq8hSECOND", "Zq8hSYS", "Zq8hCONTENT", "Zq8hEFFORT"
_HTH, _HN1, _HR1 = "Zq8hTHINK", "Zq8hfnOne", "Zq8hRESULT"
_HERR = "{{ slice %s 0 1000000 }}"  # an execution error: Ollama fails the request instead of prompting differently

#: parameter type probes (name -> JSON schema), in key order; the last one only closes the list
_HTYPES: dict[str, dict[str, Any]] = {
    "Zq8hp00": {"type": "string"}, "Zq8hp01": {"type": "number"}, "Zq8hp02": {"type": "integer"},
    "Zq8hp03": {"type": "boolean"}, "Zq8hp04": {"type": "object"}, "Zq8hp05": {"type": "array"},
    "Zq8hp06": {}, "Zq8hp07": {"type": "array", "items": {"type": "string"}},
    "Zq8hp08": {"type": "array", "items": {"type": "number"}},
    "Zq8hp09": {"type": "array", "items": {"type": "integer"}},
    "Zq8hp10": {"type": "array", "items": {"type": "boolean"}},
    "Zq8hp11": {"type": "array", "items": {"type": "object"}},
    "Zq8hp12": {"type": "string", "enum": ["Zq8he1", "Zq8he2"]}, "Zq8hp13": {"type": ["string", "null"]},
    "Zq8hp14": {"type": "object", "required": ["Zq8hk1"], "properties": {"Zq8hk1": {"type": "string"},
                                                                        "Zq8hk2": {"type": "number"}}},
    "Zq8hp15": {"type": "array", "items": {"type": ["object", "object"]}},
    "Zq8hp16": {"type": "string"},
}


def _htool(name: str, desc: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "required": required, "properties": props}}}


def _lcs(*texts: str) -> str:
    n = 0
    while n < min(len(t) for t in texts) and len({t[-1 - n] for t in texts}) == 1:
        n += 1
    return texts[0][len(texts[0]) - n:]


def _strip(text: str, pre: str, suf: str, what: str) -> str:
    if not text.startswith(pre) or not text.endswith(suf) or len(text) < len(pre) + len(suf):
        raise _NoLayout(f"{what}: the parts do not line up")
    return text[len(pre):len(text) - len(suf)]


def _harmony_parts(template: str, bos: str, eos: str, strip_bos: bool) -> dict[str, Any]:
    """The literal pieces of the Harmony layout, cut from renderings of ``template`` on sentinel conversations."""
    def r(msgs: list[dict[str, Any]], tools: Any = None, effort: str | None = _HEFF, what: str = "") -> str:
        extra = {} if effort is None else {"reasoning_effort": effort}
        try:
            out = chat_template.render(template, jinja_messages(msgs), add_generation_prompt=True, bos_token=bos,
                                       eos_token=eos, tools=tools, **extra)
        except ForgeError as e:
            raise _NoLayout(f"{what}: {e}") from None
        return out[len(bos):] if strip_bos and bos and out.startswith(bos) else out

    u, u2 = {"role": "user", "content": _HU}, {"role": "user", "content": _HU2}
    s = {"role": "system", "content": _HS}
    p: dict[str, Any] = {}
    # the system turn, user turns, a reply, the generation prompt
    head, m1, m2, m3, tail = _cut(r([u, {"role": "assistant", "content": _HC}, u2], what="a reply"),
                                  [_HEFF, _HU, _HC, _HU2], "a reply")
    p["head"] = head
    p["effort_default"] = _strip(r([u], effort=None, what="a user message"), head, m1 + _HU + tail,
                                 "the default reasoning effort")
    start = next((head[:n] for n in range(len(head), 0, -1) if head[:n] in tail), "")
    if not start:
        raise _NoLayout("no message start marker common to the system turn and the generation prompt")
    p["gen"], p["user_suf"] = tail[tail.rfind(start):], tail[:tail.rfind(start)]
    p["user_pre"], p["sys_post"] = m1[m1.rfind(start):], m1[:m1.rfind(start)]
    p["final_pre"] = _strip(m2, p["user_suf"], "", "a reply after a user turn")
    p["final_suf"] = _strip(m3, "", p["user_pre"], "a user turn after a reply")
    msg_marker = _lcs(p["user_pre"], p["final_pre"])
    # the developer turn: the first system message as instructions, the tools
    _, d1, d2, _ = _cut(r([s, u], what="a system message"), [_HEFF, _HS, _HU], "a system message")
    dev = _strip(d1, p["sys_post"], "", "the developer turn after the system turn")
    k = dev.find(msg_marker) if msg_marker else -1
    if k < 0:
        raise _NoLayout("the developer turn has no header end marker")
    p["dev_pre"], p["instr_pre"] = dev[:k + len(msg_marker)], dev[k + len(msg_marker):]
    tools = [_htool("Zq8htoolA", "Zq8hdescA", {"Zq8hopt": {"type": "string", "description": "Zq8hpdesc"},
                                                "Zq8hreq": {"type": "string"}}, ["Zq8hreq"]),
             _htool("Zq8htoolB", "Zq8hdescB", {}, []),
             _htool("Zq8htoolC", "Zq8hdescC", {"Zq8hcreq": {"type": "string"}}, ["Zq8hcreq"])]
    t = _cut(r([u], tools, what="tools"), [_HEFF, "Zq8hdescA", "Zq8htoolA", "Zq8hpdesc", "Zq8hopt", "Zq8hreq",
                                          "Zq8hdescB", "Zq8htoolB", "Zq8hdescC", "Zq8htoolC", "Zq8hcreq", _HU], "tools")
    _, ts1, ts2, _ = _cut(r([s, u], tools, what="tools and a system message"), [_HEFF, _HS, "Zq8hdescA"],
                          "tools and a system message")
    if not (t[2] == t[7] == t[9]):
        raise _NoLayout("the tools' descriptions are followed by different texts")
    p["desc_end"] = t[2]
    p["desc_pre"] = _lcs(t[1], t[8], ts2)
    sys_post_t = _strip(ts1, "", p["dev_pre"] + p["instr_pre"], "the system turn with tools")
    q = _lcs(p["sys_post"], sys_post_t)
    p["sys_post_a"], p["sys_post_b"] = p["sys_post"][:len(p["sys_post"]) - len(q)], q
    p["sys_tools_line"] = _strip(sys_post_t, p["sys_post_a"], q, "the system turn's tools line")
    p["tools_pre"] = _strip(t[1], sys_post_t + p["dev_pre"], p["desc_pre"], "the tools block's start")
    p["instr_post"] = _strip(ts2, "", p["tools_pre"] + p["desc_pre"], "the instructions before the tools")
    p["dev_end"] = _strip(d2, p["instr_post"], p["user_pre"], "the developer turn's end")
    p["params_open"] = t[10]
    p["pdesc_pre"] = _strip(t[3], t[10], "", "a parameter's description")
    p["pdesc_suf"] = t[4]
    p["no_params"] = _strip(t[8], "", p["desc_pre"], "a tool without parameters")
    p.update(_harmony_types(r, u))
    x = p["colon"] + p["types"]["string"] + p["param_end"]
    p["opt"] = _strip(t[5], "", x, "an optional parameter")
    p["params_close"] = _strip(t[6], x, p["desc_pre"], "the parameters' end")
    p["tools_end"] = _strip(t[11], x + p["params_close"], p["dev_end"] + p["user_pre"], "the tools block's end")
    # a tool call (with its reasoning and without) and its result
    call = {"role": "assistant", "content": "", "thinking": _HTH,
            "calls": [_call(_HN1, {"Zq8ha": "Zq8hv"}, "call00001")]}
    res = {"role": "tool", "content": _HR1, "tool_name": _HN1, "call_id": "call00001"}
    c = _seq(r([u, call, res], what="a tool call and its result"),
             [_HEFF, _HU, _HTH, _HN1, '"Zq8ha"', '"Zq8hv"', _HN1, _HR1], "a tool call and its result")
    cc = _seq(r([u, {**call, "thinking": ""}, res], what="a tool call"), [_HEFF, _HU, _HN1], "a tool call")
    p["analysis_pre"] = _strip(c[2], p["user_suf"], "", "the reasoning before a call")
    p["call_pre"] = _strip(cc[2], p["user_suf"], "", "a tool call's start")
    p["analysis_suf"] = _strip(c[3], "", p["call_pre"], "the reasoning's end")
    if not c[4].endswith("{") or not c[6].startswith("}"):
        raise _NoLayout("a call's arguments are not a JSON object after its name")
    p["call_mid"] = c[4][:-1]
    k = c[6].rfind(start)
    if k < 0 or not c[7].endswith('"') or not c[8].startswith('"'):
        raise _NoLayout("a tool result is not a JSON string in a message of its own")
    p["call_suf"], p["res_pre"] = c[6][1:k], c[6][k:]
    p["res_mid"] = c[7][:-1]
    p["res_suf"] = _strip(c[8][1:], "", p["gen"], "a tool result's end")
    # what ends a reply the model writes: a call's end, and the end the template gives a last (trained) reply
    try:
        trained = chat_template.render(template, jinja_messages([u, {"role": "assistant", "content": _HC}]),
                                       add_generation_prompt=False, bos_token=bos, eos_token=eos)
    except ForgeError as e:
        raise _NoLayout(f"a last reply: {e}") from None
    p["stops"] = [x for x in dict.fromkeys((trained.rsplit(_HC, 1)[-1].strip(), p["call_suf"].strip())) if x]
    p["inner"] = p["analysis_suf"] + p["final_pre"] + p["call_pre"] + p["call_mid"]
    return p


def _harmony_types(r: Any, u: dict[str, Any]) -> dict[str, Any]:
    """The type texts the template's macro writes for each kind of parameter (:data:`_HTYPES`), and the pieces
    around a parameter's type (``: `` before, ``,\\n`` after), of enums, type lists and nested objects."""
    names = list(_HTYPES)
    tool = _htool("Zq8htoolT", "Zq8hdescT", _HTYPES, names)
    pieces = _cut(r([u], [tool], what="parameter types"), [*names, _HU], "parameter types")[1:-1]
    xs = pieces[:-1]  # colon + type + param end, for each probe but the last
    colon, pend = _lcp(*xs), _lcs(*xs)
    ty = [_strip(x, colon, pend, "a parameter type") for x in xs]
    out: dict[str, Any] = {"colon": colon, "param_end": pend}
    base = dict(zip(("string", "number", "integer", "boolean", "object", "array", "any"), ty[:7]))
    out["types"] = base
    out["arr"] = dict(zip(("string", "number", "integer", "boolean"), ty[7:11]))
    if not ty[11].startswith(base["object"]):
        raise _NoLayout("an array of objects is not written as the object type with a suffix")
    out["arr_suf"] = ty[11][len(base["object"]):]
    out["enum_pre"], out["enum_sep"], out["enum_suf"] = _cut(ty[12], ["Zq8he1", "Zq8he2"], "an enum")
    if not ty[13].startswith("string") or not ty[13].endswith("null"):
        raise _NoLayout("a list of types is not written as the types' names")
    out["list_sep"] = ty[13][len("string"):-len("null")]
    o_open, a, b = _cut(ty[14], ["Zq8hk1", "Zq8hk2"], "a nested object")
    i = a.find(base["string"])
    if i < 0:
        raise _NoLayout("a nested object's property types are written differently")
    out["obj_open"], out["obj_colon"], out["obj_sep"] = o_open, a[:i], a[i + len(base["string"]):]
    j = b.find(out["obj_colon"] + base["number"])
    if j < 0:
        raise _NoLayout("a nested object's optional property is written differently")
    out["obj_opt"], out["obj_close"] = b[:j], b[j + len(out["obj_colon"] + base["number"]):]
    out["arr_many"] = ty[15]
    return out


def _lcp(*texts: str) -> str:
    n = 0
    while n < min(len(t) for t in texts) and len({t[n] for t in texts}) == 1:
        n += 1
    return texts[0][:n]


def _go_harmony_types(p: dict[str, Any], lit: Any) -> str:
    """``hp`` (an ``api.ToolProperty``), ``hj`` (raw JSON schema: an array's items and what they hold) and ``ha``
    (an array's items), written as the template's macro writes them."""
    T, A = p["types"], p["arr"]
    lit = _brace_safe(lit)

    def err(text: str) -> str:
        return _HERR % _go_str(text)

    def enum(field: str) -> str:
        return (lit(p["enum_pre"]) + "{{ range $i, $e := " + field + " }}{{ if $i }}" + lit(p["enum_sep"])
                + "{{ end }}{{ $e }}{{ end }}" + lit(p["enum_suf"]))

    def scalars(t: str) -> str:
        return ("{{- else if eq " + t + " \"number\" }}" + lit(T["number"]) + "{{ else if eq " + t + " \"integer\" }}"
                + lit(T["integer"]) + "{{ else if eq " + t + " \"boolean\" }}" + lit(T["boolean"]))

    def obj(props: str, required: str, self_: str) -> str:
        return ("{{ $o := . }}" + lit(p["obj_open"]) + "{{ $first := true }}{{ range $k, $v := " + props
                + " }}{{ if not $first }}" + lit(p["obj_sep"]) + "{{ end }}{{ $first = false }}{{ $k }}"
                "{{ $r := false }}{{ range $o." + required + " }}{{ if eq . $k }}{{ $r = true }}{{ end }}{{ end }}"
                "{{ if not $r }}" + lit(p["obj_opt"]) + "{{ end }}" + lit(p["obj_colon"]) + "{{ template \"" + self_
                + "\" $v }}{{ end }}" + lit(p["obj_close"]))

    ha = ("{{- define \"ha\" }}{{ $t := printf \"%v\" .type }}{{ $tt := printf \"%T\" .type }}"
          + "".join(("{{ if " if i == 0 else "{{ else if ") + "eq $t \"" + k + "\" }}" + lit(A[k])
                    for i, k in enumerate(("string", "number", "integer", "boolean")))
          + "{{ else if .oneOf }}" + err("an array whose items have oneOf: not reproduced")
          + "{{ else if and (eq $t \"object\") .properties }}" + _go_items_object(p, lit, err)
          + "{{ else if and (eq $tt \"[]interface {}\") (eq $t \"[object object]\") }}" + lit(p["arr_many"])
          + "{{ else if and (eq $tt \"[]interface {}\") (gt (len .type) 5) }}"
          + err("an array item type listing more than 5 types") + "{{ else }}{{ template \"hj\" . }}"
          + lit(p["arr_suf"]) + "{{ end }}{{ end }}")
    hj = ("{{- define \"hj\" }}{{ $t := printf \"%v\" .type }}{{ $tt := printf \"%T\" .type }}"
          "{{ if or .nullable .oneOf }}" + err("nullable / oneOf in an array's items")
          + "{{ else if eq $t \"array\" }}{{ if .items }}{{ template \"ha\" .items }}{{ else }}" + lit(T["array"])
          + "{{ end }}{{ else if eq $tt \"[]interface {}\" }}{{ if gt (len .type) 1 }}{{ range $i, $x := .type }}"
          "{{ if $i }}" + lit(p["list_sep"]) + "{{ end }}{{ $x }}{{ end }}{{ else if eq (len .type) 1 }}"
          "{{ index .type 0 }}{{ else }}" + lit(T["any"]) + "{{ end }}"
          "{{ else if eq $t \"string\" }}{{ if .enum }}" + enum(".enum") + "{{ else }}" + lit(T["string"]) + "{{ end }}"
          + scalars("$t") + "{{ else if eq $t \"object\" }}{{ if .properties }}" + obj(".properties", "required", "hj")
          + "{{ else }}" + lit(T["object"]) + "{{ end }}{{ else }}" + lit(T["any"]) + "{{ end }}{{ end }}")
    hp = ("{{- define \"hp\" }}{{ $t := \"\" }}{{ if eq (len .Type) 1 }}{{ $t = index .Type 0 }}{{ end }}"
          "{{ if eq $t \"array\" }}{{ if .Items }}{{ template \"ha\" .Items }}{{ else }}" + lit(T["array"])
          + "{{ end }}{{ else if gt (len .Type) 1 }}{{ range $i, $x := .Type }}{{ if $i }}" + lit(p["list_sep"])
          + "{{ end }}{{ $x }}{{ end }}{{ else if eq $t \"string\" }}{{ if .Enum }}" + enum(".Enum") + "{{ else }}"
          + lit(T["string"]) + "{{ end }}" + scalars("$t") + "{{ else if eq $t \"object\" }}{{ if .Properties.Len }}"
          + obj(".Properties.ToMap", "Required", "hp") + "{{ else }}" + lit(T["object"]) + "{{ end }}{{ else }}"
          + lit(T["any"]) + "{{ end }}{{ end }}")
    return "\n".join((ha, hj, hp))


def _brace_safe(lit: Any) -> Any:
    """``lit`` for text that an action follows: a text ending in ``{`` would make ``{{{`` (Go reads the action from
    the first two braces), so that brace is written as ``{{ "{" }}``."""
    def out(text: str) -> str:
        return lit(text[:-1]) + '{{ "{" }}' if text.endswith("{") else lit(text)
    return out


def _go_items_object(p: dict[str, Any], lit: Any, err: Any) -> str:
    """An array's items that are an object with properties: the macro writes the object's type text, or ``any[]``
    when that text is longer than 50 characters. The text is built in a variable (``printf``) to measure it, for
    properties of scalar types (a nested type would need a template's output as a value); anything else, or a
    non-ASCII text (Go measures bytes, Jinja characters), fails the request."""
    T = p["types"]

    def add(text: str) -> str:
        return "{{ $s = printf \"%s%s\" $s " + _go_str(text) + " }}"

    scal = "".join(("{{ if " if i == 0 else "{{ else if ") + "eq $vt \"" + k + "\" }}" + add(T[k])
                   for i, k in enumerate(("string", "number", "integer", "boolean")))
    return ("{{ $o := . }}{{ $s := " + _go_str(p["obj_open"]) + " }}{{ $ok := true }}{{ $first := true }}"
            "{{ range $k, $v := .properties }}{{ if not $first }}" + add(p["obj_sep"]) + "{{ end }}"
            "{{ $first = false }}{{ $r := false }}{{ range $o.required }}{{ if eq . $k }}{{ $r = true }}{{ end }}"
            "{{ end }}{{ $s = printf \"%s%s\" $s $k }}{{ if not $r }}" + add(p["obj_opt"]) + "{{ end }}"
            + add(p["obj_colon"]) + "{{ $vt := printf \"%v\" $v.type }}{{ if or $v.enum $v.oneOf $v.nullable }}"
            "{{ $ok = false }}" + add("?") + "{{ else }}" + scal + "{{ else }}{{ $ok = false }}" + add("?")
            + "{{ end }}{{ end }}{{ end }}" + add(p["obj_close"])
            # a type not measured counts one character: a lower bound, enough to know the text is over 50
            + "{{ if ne (len (printf \"%q\" $s)) (len (printf \"%+q\" $s)) }}"
            + err("an array of objects with non-ASCII property names: not reproduced")
            + "{{ else if gt (len $s) 50 }}" + lit(p["arr_many"]) + "{{ else if not $ok }}"
            + err("an array of objects with a property that is not a plain string, number, integer or boolean: "
                  "the chat template writes \"any[]\" or the full type by the type text's length, which an Ollama "
                  "template cannot measure for nested types")
            + "{{ else }}{{ $s }}" + lit(p["arr_suf"])
            + "{{ end }}")


def go_harmony(p: dict[str, Any], lit: Any) -> str:
    """The whole TEMPLATE of a Harmony template (see the section comment)."""
    lit = _brace_safe(lit)
    lines = [_go_harmony_types(p, lit),
             "{{- $hasSys := false }}{{ $sys := \"\" }}{{ if .Messages }}{{ $m0 := index .Messages 0 }}"
             "{{ if or (eq $m0.Role \"system\") (eq $m0.Role \"developer\") }}{{ $hasSys = true }}"
             "{{ $sys = $m0.Content }}{{ end }}{{ end }}",
             "{{- $lastReply := -1 }}{{ range $i, $m := .Messages }}{{ if and (eq .Role \"assistant\") "
             "(not .ToolCalls) }}{{ $lastReply = $i }}{{ end }}{{ end }}",
             "{{- \"\" }}" + lit(p["head"]) + "{{ if .ThinkLevel }}{{ .ThinkLevel }}{{ else }}"
             + lit(p["effort_default"]) + "{{ end }}" + lit(p["sys_post_a"]) + "{{ if .Tools }}"
             + lit(p["sys_tools_line"]) + "{{ end }}" + lit(p["sys_post_b"]),
             "{{- if or $sys .Tools }}" + lit(p["dev_pre"]) + "{{ if $sys }}" + lit(p["instr_pre"]) + "{{ $sys }}"
             + lit(p["instr_post"]) + "{{ end }}{{ if .Tools }}" + lit(p["tools_pre"]) + "{{ range .Tools }}"
             + lit(p["desc_pre"]) + "{{ .Function.Description }}" + lit(p["desc_end"]) + "{{ .Function.Name }}"
             "{{ if .Function.Parameters.Properties }}" + lit(p["params_open"])
             + "{{ $req := .Function.Parameters.Required }}{{ range $k, $v := .Function.Parameters.Properties }}"
             "{{ if $v.Description }}" + lit(p["pdesc_pre"]) + "{{ $v.Description }}" + lit(p["pdesc_suf"])
             + "{{ end }}{{ $k }}{{ $r := false }}{{ range $req }}{{ if eq . $k }}{{ $r = true }}{{ end }}{{ end }}"
             "{{ if not $r }}" + lit(p["opt"]) + "{{ end }}" + lit(p["colon"]) + "{{ template \"hp\" $v }}"
             + lit(p["param_end"]) + "{{ end }}" + lit(p["params_close"]) + "{{ else }}" + lit(p["no_params"])
             + "{{ end }}{{ end }}" + lit(p["tools_end"]) + "{{ end }}" + lit(p["dev_end"]) + "{{ end }}",
             "{{- $call := \"\" }}{{ $hasCall := false }}{{ range $i, $m := .Messages }}",
             "{{- if and (eq $i 0) $hasSys }}",
             "{{- else if eq .Role \"assistant\" }}{{ if .ToolCalls }}{{ if le $lastReply $i }}{{ if .Content }}"
             + lit(p["analysis_pre"]) + "{{ .Content }}" + lit(p["analysis_suf"]) + "{{ else if .Thinking }}"
             + lit(p["analysis_pre"]) + "{{ .Thinking }}" + lit(p["analysis_suf"]) + "{{ end }}{{ end }}"
             "{{ if and .Content .Thinking }}"
             + _HERR % _go_str("an assistant message with tool calls, content and thinking: the chat template "
                               "refuses it") + "{{ end }}"
             "{{ $c := index .ToolCalls 0 }}" + lit(p["call_pre"]) + "{{ $c.Function.Name }}" + lit(p["call_mid"])
             + "{{ $c.Function.Arguments }}" + lit(p["call_suf"]) + "{{ $call = $c.Function.Name }}"
             "{{ $hasCall = true }}{{ else }}" + lit(p["final_pre"]) + "{{ .Content }}" + lit(p["final_suf"])
             + "{{ $hasCall = false }}{{ end }}",
             "{{- else if eq .Role \"tool\" }}{{ if not $hasCall }}"
             + _HERR % _go_str("a tool message without an earlier tool call: the chat template refuses it")
             + "{{ end }}" + lit(p["res_pre"]) + "{{ $call }}" + lit(p["res_mid"]) + "{{ json .Content }}"
             + lit(p["res_suf"]),
             "{{- else if eq .Role \"user\" }}" + lit(p["user_pre"]) + "{{ .Content }}" + lit(p["user_suf"]),
             "{{- end }}",
             "{{- end }}" + lit(p["gen"])]
    return "\n".join(line + ('{{ "" }}' if line[-1:].isspace() else "") for line in lines)


def harmony_cases() -> list[Case]:
    """The tool suite plus what Harmony adds: reasoning effort levels, plain conversations (the TEMPLATE replaces
    the plain one), a reply after a call (the call's reasoning dropped), a result after a reply (refused by both),
    nested parameter types."""
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    sys_ = {"role": "system", "content": "You are a helpful assistant."}
    call1 = {"role": "assistant", "content": "", "thinking": "I need the weather tool.",
             "calls": [_call("get_weather", {"city": "Paris"}, "call00001")]}
    res1 = {"role": "tool", "content": '{"temperature": 18, "sky": "clear"}', "tool_name": "get_weather",
            "call_id": "call00001"}
    answer = {"role": "assistant", "content": "It is 18 degrees.", "thinking": "Report it."}
    nested = [{"type": "function", "function": {"name": "plan", "description": "Plan a trip.", "parameters": {
        "type": "object", "required": ["stops"], "properties": {
            "budget": {"type": "object", "required": ["amount"], "properties": {
                "amount": {"type": "number"}, "currency": {"type": "string", "enum": ["EUR", "USD"]},
                "limits": {"type": "object", "properties": {"hard": {"type": "boolean"}}}}},
            "legs": {"type": "array", "items": {"type": "object", "required": ["to"], "properties": {
                "to": {"type": "string"}}}},
            "lines": {"type": "array", "items": {"type": "object", "properties": {
                "qty": {"type": "integer"}, "sku": {"type": "string"}}}},
            "mode": {"type": ["string", "null"], "description": "How to travel"},
            "stops": {"type": "array", "items": {"type": "string"}},
            "tags": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            "when": {"description": "Any time format"}}}}}, *TOOLS]
    return [*tool_suite(),
            Case("reasoning effort low", [ask], None, "low"),
            Case("reasoning effort high, with tools and a system message", [sys_, ask], TOOLS, "high"),
            Case("plain: system, three turns", [sys_, {"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Hello!"},
                                                {"role": "user", "content": "Bye"}]),
            Case("a call, its result, a reply with reasoning and a new question",
                 [ask, call1, res1, answer, {"role": "user", "content": "And Rome?"}], TOOLS, True),
            Case("a tool result after a reply", [ask, answer, res1], TOOLS),
            Case("nested parameter types", [sys_, ask], nested)]


def translate_harmony(template: str, *, bos: str, eos: str, strip_bos: bool, system: str | None,
                      lit: Any) -> ToolResult:
    """The whole TEMPLATE for a Harmony template, proven on :func:`harmony_cases`, or why it cannot be written."""
    try:
        p = _harmony_parts(template, bos, eos, strip_bos)
    except _NoLayout as e:
        return ToolResult(None, "refused", f"its Harmony format fits no layout a Go template can reproduce ({e})",
                          "harmony")
    go_tpl = go_harmony(p, lit)
    ws, problem = verify(template, go_tpl, bos, eos, strip_bos, system)
    if problem:
        return ToolResult(None, "refused", f"the Go template would differ on {problem}", "harmony")
    problem = _marker_problem(template, go_tpl)
    if problem:
        return ToolResult(None, "refused", problem, "harmony")
    return ToolResult(go_tpl, "exact but JSON whitespace" if ws else "exact", "", "harmony", HARMONY_NOTE,
                      harmony_stops(p, eos))


def harmony_stops(p: dict[str, Any], eos: str) -> list[str]:
    """Stops for a Harmony model: the end of a final reply (``<|return|>``) and of a call (``<|call|>``), never the
    markers between a reply's channels (``<|end|>``, ``<|start|>``, ``<|message|>``: a reply writes its analysis,
    then ``<|end|><|start|>assistant<|channel|>final<|message|>``, then the answer)."""
    return [s for s in dict.fromkeys([*p["stops"], eos]) if s and s not in p["inner"]]


#: how a Harmony TEMPLATE is recognised (its type define)
HARMONY_MARK = '{{- define "hp" }}'

HARMONY_NOTE = ("Harmony: Ollama parses replies with its built-in harmony parser (reasoning, final answer, "
                "to=functions.NAME calls) when the GGUF's architecture is gpt-oss and the TEMPLATE contains <|start|> "
                "and <|end|>; for another architecture add PARSER harmony. think=low/medium/high sets the reasoning "
                "effort (true: medium)")
