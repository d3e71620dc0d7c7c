"""Jinja chat template -> Ollama Go template (over ``.Messages``), proven equal by rendering before anything is written.

Method: render the Jinja template (:func:`gguf_forge.chat_template.render`, as transformers renders it) on
conversations whose contents are sentinels, cut the output at the sentinels to find each role's prefix and suffix,
how a system message is placed (its own block, folded into the first or the last user turn), the default system
prompt the template injects, and the generation prompt.
From those parts a Go template is built; then a conversation suite is rendered both by the Jinja template and by the
Go template's semantics (the message list built as Ollama builds it) and any difference is an error naming it.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import chat_template
from ..errors import ForgeError
from . import tools

_S, _U1, _A1, _U2 = "Zq7sysTEXT", "Zq7userONE", "Zq7replyONE", "Zq7userTWO"


@dataclass
class TurnFormat:
    """How a template lays out a conversation (after the leading BOS, which Ollama adds itself)."""

    # "block" (own block), "fold_first" / "fold_last" (inside the first / last user turn), "drop" (system messages
    # render nothing), "raise" (the template refuses system messages: so does the Go template, with ``sys_error``)
    system_mode: str
    sys_pre: str
    sys_suf: str
    user_pre: str
    user_suf: str
    asst_pre: str
    asst_suf: str
    gen: str  # generation prompt, after the last user turn
    bos: str = ""
    bos_repeat: bool = False  # user_pre starts with BOS, left out when the user turn opens the prompt
    default_system: str | None = None  # what the template renders when the conversation has no system message
    no_sys_head: str | None = None  # fixed text (not a system block) rendered first when there is no system message
    lead: str = ""  # fixed text that opens every conversation (after BOS), e.g. GLM-4's [gMASK]<sop>
    sys_error: str = ""  # the template's own error for a system message (system_mode "raise")


@dataclass
class Translation:
    """The result of :func:`translate`: Go template, stop strings, the SYSTEM to write, warnings."""

    fmt: TurnFormat
    go_template: str
    stops: list[str]
    system: str | None
    trims: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # comments for the Modelfile (documented exceptions)
    tools: str = "none"  # tools/thinking: "none", "exact", "exact but JSON whitespace", "refused"
    tools_reason: str = ""  # why tools/thinking were refused
    writes_date: bool = False  # today's date as YYYY-MM-DD: {{ currentDate }} in the TEMPLATE

    @property
    def manual(self) -> dict[str, str] | None:
        """LM Studio's manual prefix/suffix form, when the template is expressible that way (not when it writes
        today's date: a fixed prefix cannot)."""
        return None if self.writes_date else manual_form(self.fmt)


# -- conversation suite -----------------------------------------------------------------------------------------------
def suite(strip: bool = False) -> list[tuple[str, list[dict[str, str]]]]:
    """The conversations every translation is checked on (contents stripped for templates that trim)."""
    convs = [
        ("one user turn", [("user", "Hello!")]),
        ("system + user", [("system", "You are a pirate. Answer briefly."), ("user", "Hi, who are you?")]),
        ("three turns", [("user", "What is 2+2?"), ("assistant", "2+2 is 4."), ("user", "And 3+3?")]),
        ("three turns with system", [("system", "Be concise."), ("user", "What is 2+2?"),
                                     ("assistant", "It is 4."), ("user", "And 3+3?")]),
        ("Chinese and emoji", [("system", "你是一个乐于助人的助手。"), ("user", "你好！😀 今天天气怎么样？"),
                               ("assistant", "今天天气晴朗 ☀️，适合出门。"), ("user", "谢谢 🙏")]),
        ("braces, special-token-like text, trailing newlines", [
            ("user", "Explain {{ .Content }} and }} or {{ in Go; also <|eot_id|>, <|im_end|>, </s> and [INST].\n\n"),
            ("assistant", "In Go templates {{ and }} delimit actions.\n"),
            ("user", "Thanks.\n\n\n")]),
    ]
    out = []
    for name, msgs in convs:
        out.append((name, [{"role": r, "content": c.strip() if strip else c} for r, c in msgs]))
    return out


_WHITESPACE_PROBE = [{"role": "system", "content": "  Be brief.  \n"}, {"role": "user", "content": " Hi \n"},
                     {"role": "assistant", "content": "\n Hello \n"}, {"role": "user", "content": "  Bye\n\n"}]


def ollama_messages(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """The message list Ollama hands a template: SYSTEM first when the request has none, same roles merged."""
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    out: list[dict[str, str]] = []
    for m in msgs:
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1]["content"] += "\n\n" + m["content"]
        else:
            out.append(m)
    return out


def with_system(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """``messages`` with ``system`` put first when they have no system message (what Ollama/LM Studio send)."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


# -- the Go template and its semantics --------------------------------------------------------------------------------
def render_like_go(fmt: TurnFormat, messages: list[dict[str, str]]) -> str:
    """What :func:`go_template` renders for an Ollama message list (kept in step with it; tests run the real Go)."""
    out: list[str] = [fmt.lead]
    first, has_sys, sys_text = True, False, ""
    n = len(messages)
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if fmt.system_mode == "block" and i == 0 and role != "system":
            if fmt.no_sys_head is not None:
                out.append(fmt.no_sys_head)
                first = False
            elif fmt.default_system is not None:
                out.append(fmt.sys_pre + fmt.default_system + fmt.sys_suf)
                first = False
        if role == "system":
            if fmt.system_mode == "raise":
                raise ValueError(fmt.sys_error)
            if fmt.system_mode == "drop":
                continue
            if fmt.system_mode == "block":
                out.append(fmt.sys_pre + content + fmt.sys_suf)
                first = False
            else:
                has_sys, sys_text = True, content
        elif role == "user":
            pre = fmt.user_pre
            if fmt.bos_repeat and first:
                pre = pre[len(fmt.bos):]
            out.append(pre)
            if fmt.system_mode == "fold_first" and first:
                if has_sys:
                    out.append(fmt.sys_pre + sys_text + fmt.sys_suf)
                elif fmt.default_system is not None:
                    out.append(fmt.sys_pre + fmt.default_system + fmt.sys_suf)
            if fmt.system_mode == "fold_last" and has_sys and i == n - 1:
                out.append(fmt.sys_pre + sys_text + fmt.sys_suf)
            out.append(content + fmt.user_suf)
            first = False
        elif role == "assistant":
            out.append(fmt.asst_pre + content + fmt.asst_suf)
            first = False
    out.append(fmt.gen)
    return "".join(out)


def _printable(ch: str) -> bool:
    # what Ollama's Modelfile parser keeps (Go strconv.IsPrint, plus the whitespace it keeps)
    return ch.isprintable() or ch in "\n\t\r"


def go_string(text: str) -> str:
    """A Go interpreted string literal for ``text`` that survives the Modelfile parser (no quotes, all printable)."""
    out = []
    for ch in text:
        if ch == '"':
            out.append("\\x22")
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def lit(text: str) -> str:
    """Literal text for the Go template: raw where safe, ``{{ "..." }}`` for ``{{``, ``\"\"\"``, unprintables;
    while a template that writes today's date is translated, that date (rendered on :data:`DATE_PROBE`) is
    ``{{ currentDate }}``."""
    if _DATE_MODE.get() and DATE_PROBE_TEXT in text:
        return "{{ currentDate }}".join(_lit(part) for part in text.split(DATE_PROBE_TEXT))
    return _lit(text)


def _lit(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith("{{", i):
            out.append('{{ "{{" }}')
            i += 2
        elif text.startswith('"""', i) or (text[i] == '"' and i == len(text) - 1):
            out.append("{{ " + go_string('"') + " }}")
            i += 1
        elif not _printable(text[i]):
            out.append("{{ " + go_string(text[i]) + " }}")
            i += 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def go_template(fmt: TurnFormat) -> str:
    """The Ollama TEMPLATE (Go text/template over ``.Messages``) for ``fmt``; no BOS, Ollama adds it."""
    block = fmt.system_mode == "block"
    lines = ["{{- $first := true }}" + lit(fmt.lead) + ('{{ "" }}' if fmt.lead[-1:].isspace() else "")]
    if fmt.system_mode in ("fold_first", "fold_last"):
        lines.append("{{- $hasSys := false }}{{- $sys := \"\" }}")
    lines.append("{{- range $i, $m := .Messages }}")
    head = fmt.no_sys_head if fmt.no_sys_head is not None else (
        None if fmt.default_system is None else fmt.sys_pre + fmt.default_system + fmt.sys_suf)
    if block and head is not None:
        lines.append('{{- if and (eq $i 0) (ne .Role "system") }}' + lit(head) + "{{ $first = false }}{{ end }}")
    if fmt.system_mode == "raise":
        # text/template cannot raise; slicing past the end is an execution error that carries the message
        message = go_string(fmt.sys_error or "system messages are not supported")
        lines.append('{{- if eq .Role "system" }}{{ slice ' + message + " 0 100000 }}")
    elif fmt.system_mode == "drop":
        lines.append('{{- if eq .Role "system" }}')
    elif block:
        lines.append('{{- if eq .Role "system" }}' + lit(fmt.sys_pre) + "{{ .Content }}" + lit(fmt.sys_suf)
                     + "{{ $first = false }}")
    else:
        lines.append('{{- if eq .Role "system" }}{{ $hasSys = true }}{{ $sys = .Content }}')
    user = '{{- else if eq .Role "user" }}'
    if fmt.bos_repeat:
        user += "{{ if not $first }}" + lit(fmt.bos) + "{{ end }}" + lit(fmt.user_pre[len(fmt.bos):])
    else:
        user += lit(fmt.user_pre)
    if fmt.system_mode == "fold_first":
        fold = "{{ if $first }}{{ if $hasSys }}" + lit(fmt.sys_pre) + "{{ $sys }}" + lit(fmt.sys_suf)
        if fmt.default_system is not None:
            fold += "{{ else }}" + lit(fmt.sys_pre + fmt.default_system + fmt.sys_suf)
        user += fold + "{{ end }}{{ end }}"
    elif fmt.system_mode == "fold_last":
        user += ("{{ if and $hasSys (eq (len (slice $.Messages $i)) 1) }}" + lit(fmt.sys_pre) + "{{ $sys }}"
                 + lit(fmt.sys_suf) + "{{ end }}")
    user += "{{ .Content }}" + lit(fmt.user_suf) + "{{ $first = false }}"
    lines.append(user)
    lines.append('{{- else if eq .Role "assistant" }}' + lit(fmt.asst_pre) + "{{ .Content }}" + lit(fmt.asst_suf)
                 + "{{ $first = false }}")
    lines.append("{{- end }}")
    lines.append("{{- end }}" + lit(fmt.gen))
    return "\n".join(lines)


def manual_form(fmt: TurnFormat) -> dict[str, str] | None:
    """LM Studio's manual template (before/after each role), or None when prefixes/suffixes cannot express it."""
    if (fmt.system_mode != "block" or fmt.gen != fmt.asst_pre or fmt.bos_repeat or fmt.default_system == ""
            or fmt.lead or fmt.no_sys_head is not None):
        return None
    return {"beforeSystem": fmt.sys_pre, "afterSystem": fmt.sys_suf, "beforeUser": fmt.user_pre,
            "afterUser": fmt.user_suf, "beforeAssistant": fmt.asst_pre, "afterAssistant": fmt.asst_suf}


def render_manual(manual: dict[str, str], messages: list[dict[str, str]]) -> str:
    """Concatenate LM Studio's manual prefixes/suffixes for ``messages`` plus the generation prompt."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    out = [manual[f"before{names[m['role']]}"] + m["content"] + manual[f"after{names[m['role']]}"] for m in messages]
    return "".join(out) + manual["beforeAssistant"]


# -- inference --------------------------------------------------------------------------------------------------------
class _Renderer:
    """Renders the Jinja template; a leading BOS is cut off when Ollama adds it itself (``strip_bos``)."""

    def __init__(self, template: str, bos: str, eos: str, strip_bos: bool = True, lead: str = ""):
        self.template, self.bos, self.eos, self.strip_bos, self.lead = template, bos, eos, strip_bos, lead
        self.starts_with_bos = False
        self.error = ""  # the template's own message when it last failed

    def __call__(self, msgs: list[dict[str, str]], gen: bool = True, what: str = "") -> str:
        try:
            out = chat_template.render(self.template, msgs, add_generation_prompt=gen, bos_token=self.bos,
                                       eos_token=self.eos)
        except Exception as e:  # jinja2 errors, raise_exception(), bad attribute access...
            msg = _template_message(e)
            self.error = msg
            raise ForgeError(f"the chat template fails on {what or 'a conversation'}: {msg}") from None
        if self.bos and out.startswith(self.bos):
            self.starts_with_bos = True
            if self.strip_bos:
                out = out[len(self.bos):]
        if self.lead:
            if not out.startswith(self.lead):
                raise ForgeError(f"the chat template does not always open with {self.lead!r}")
            out = out[len(self.lead):]
        return out


def _template_message(error: Exception) -> str:
    """The template's own message (``raise_exception``'s text, Jinja's) in one line: the Jinja error that
    :func:`gguf_forge.chat_template.render` turned into a ForgeError, or of any other exception."""
    cause = error.__context__ if isinstance(error, ForgeError) and error.__context__ is not None else error
    return " ".join(str(cause).split())[:300] if str(cause).strip() else type(cause).__name__


def _m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _cut(text: str, sentinels: list[str], what: str) -> list[str]:
    """Split ``text`` at the sentinels, which must each occur once and in order."""
    parts, rest = [], text
    for s in sentinels:
        if text.count(s) != 1:
            raise ForgeError(f"the chat template transforms or repeats message content ({what}: the text of a "
                             "message does not appear exactly once, verbatim); a Go template cannot reproduce that")
        head, sep, rest2 = rest.partition(s)
        if not sep:
            raise ForgeError(f"the chat template reorders messages ({what}); a Go template over .Messages cannot")
        parts.append(head)
        rest = rest2
    parts.append(rest)
    return parts


def _lcp(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _lcs(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:] if n else ""


def infer_format(template: str, bos: str = "", eos: str = "", strip_bos: bool = True) -> TurnFormat:
    """Find the parts of ``template``'s layout by rendering it with sentinel messages.

    With ``strip_bos`` false (a GGUF whose ``add_bos_token`` is false: Ollama adds no BOS) a leading BOS text
    stays part of the layout, so the Go template writes it. Fixed text that opens every conversation (GLM-4's
    ``[gMASK]<sop>``) is found as the longest common opening of conversations with and without a system message
    for which the rest of the layout can be inferred.
    """
    try:
        return _infer(template, bos, eos, strip_bos, "")
    except ForgeError as error:
        r = _Renderer(template, bos, eos, strip_bos)
        try:
            common = _lcp(r([_m("user", _U1)], False, "one user message"),
                          r([_m("system", _S), _m("user", _U1)], False, "a system message"))
        except ForgeError:
            raise error from None
        for k in range(len(common), 0, -1):
            try:
                fmt = _infer(template, bos, eos, strip_bos, common[:k])
            except ForgeError:
                continue
            fmt.lead = common[:k] + fmt.lead
            return fmt
        raise error from None


@dataclass
class _Layout:
    """The parts of a conversation without a system message (three turns cut at their sentinels)."""

    h: str  # before the first user content
    x1: str  # between the first user content and the reply
    x2: str  # between the reply and the second user content
    t: str  # after the last user content
    user_pre: str
    user_suf: str
    asst_pre: str
    asst_suf: str
    gen: str
    bos: str
    firsts: list[str]  # how the first user turn may open: its prefix, with or without BOS

    def fmt(self, system_mode: str, sys_pre: str = "", sys_suf: str = "", **kwargs: Any) -> TurnFormat:
        return TurnFormat(system_mode, sys_pre, sys_suf, self.user_pre, self.user_suf, self.asst_pre, self.asst_suf,
                          self.gen, self.bos, **kwargs)


def _turn_layout(r: _Renderer, bos: str) -> _Layout:
    """Role prefixes and suffixes and the generation prompt, from conversations without a system message."""
    u_suf_n = _cut(r([_m("user", _U1)], False, "one user message"), [_U1], "one user message")[1]
    a_suf_n = _cut(r([_m("user", _U1), _m("assistant", _A1)], False, "a user and an assistant message"),
                   [_U1, _A1], "a reply")[2]
    h, x1, x2, t = _cut(r([_m("user", _U1), _m("assistant", _A1), _m("user", _U2)], True, "three turns"),
                        [_U1, _A1, _U2], "three turns")
    tail_one = _cut(r([_m("user", _U1)], True, "one user message"), [_U1], "one user message")[1]
    if tail_one != t:
        raise ForgeError("the chat template ends a one-turn conversation differently from a multi-turn one "
                         f"({tail_one!r} vs {t!r}); a Go template cannot reproduce that")
    user_suf = u_suf_n if x1.startswith(u_suf_n) and t.startswith(u_suf_n) else _lcp(x1, t)
    asst_pre, gen = x1[len(user_suf):], t[len(user_suf):]
    if a_suf_n and x2.startswith(a_suf_n):
        asst_suf = a_suf_n
    else:
        asst_suf = x2[: len(x2) - len(_lcs(h, x2))]
    user_pre = x2[len(asst_suf):]
    firsts = [user_pre] + ([user_pre[len(bos):]] if bos and user_pre.startswith(bos) else [])
    return _Layout(h, x1, x2, t, user_pre, user_suf, asst_pre, asst_suf, gen, bos, firsts)


def _infer(template: str, bos: str, eos: str, strip_bos: bool, lead: str) -> TurnFormat:
    r = _Renderer(template, bos, eos, strip_bos, lead)
    if not strip_bos:
        bos = ""  # the layout keeps whatever the template writes first
    lay = _turn_layout(r, bos)
    sys_conv = [_m("system", _S), _m("user", _U1), _m("assistant", _A1), _m("user", _U2)]
    try:
        s_all = r(sys_conv, True, "a system message and three turns")
    except ForgeError:
        return _refused_system(r, lay)
    if _S not in s_all and s_all == lay.h + _U1 + lay.x1 + _A1 + lay.x2 + _U2 + lay.t:
        return _dropped_system(lay)
    if s_all.count(_S) != 1:
        raise ForgeError("the chat template drops or repeats the system message; a Go template would not match it")
    return _head_without_system(_system_placement(s_all, lay), lay)


def _refused_system(r: _Renderer, lay: _Layout) -> TurnFormat:
    """A template that refuses system messages (raise_exception): the Go template refuses them too."""
    error = r.error
    r([_m("user", _U1), _m("assistant", _A1), _m("user", _U2)], True, "three turns")  # fails if not the system
    if lay.h in lay.firsts:
        return lay.fmt("raise", bos_repeat=lay.h != lay.user_pre, sys_error=error)
    if lay.user_pre and lay.h.endswith(lay.user_pre):
        return lay.fmt("raise", lead=lay.h[: len(lay.h) - len(lay.user_pre)], sys_error=error)
    raise ForgeError(f"the chat template adds text before the first user turn that we cannot reproduce ({lay.h!r})")


def _dropped_system(lay: _Layout) -> TurnFormat:
    """System messages render nothing; text before the first turn, if any, is fixed."""
    if lay.h in lay.firsts:
        return lay.fmt("drop", bos_repeat=lay.h != lay.user_pre)
    if lay.user_pre and lay.h.endswith(lay.user_pre):
        return lay.fmt("drop", lead=lay.h[: len(lay.h) - len(lay.user_pre)])
    raise ForgeError(f"the chat template adds text before the first user turn that we cannot reproduce ({lay.h!r})")


def _system_placement(s_all: str, lay: _Layout) -> TurnFormat:
    """Where a system message goes: its own block, or folded into the first or the last user turn."""
    pos = {k: s_all.find(k) for k in (_S, _U1, _A1, _U2)}
    if pos[_S] < pos[_U1]:
        p, q1, y1, y2, y3 = _cut(s_all, [_S, _U1, _A1, _U2], "a system message and three turns")
        if (y1, y2, y3) != (lay.x1, lay.x2, lay.t):
            raise ForgeError("a system message changes how the later turns are rendered; a Go template cannot "
                             "reproduce that")
        if lay.user_pre and q1.endswith(lay.user_pre) and not any(p.startswith(f) and f for f in lay.firsts):
            return lay.fmt("block", p, q1[: len(q1) - len(lay.user_pre)])
        first = next((f for f in sorted(lay.firsts, key=len, reverse=True) if p.startswith(f)), None)
        if first is None:
            raise ForgeError("the chat template places the system message in a way that is neither its own "
                             "block nor a prefix of the first user turn; a Go template cannot reproduce that")
        return lay.fmt("fold_first", p[len(first):], q1, bos_repeat=first != lay.user_pre)
    if pos[_U1] < pos[_A1] < pos[_S] < pos[_U2]:
        h2, z1, y, q, z3 = _cut(s_all, [_U1, _A1, _S, _U2], "a system message and three turns")
        if h2 != lay.h or z1 != lay.x1 or z3 != lay.t or not y.startswith(lay.x2):
            raise ForgeError("a system message changes how the other turns are rendered; a Go template cannot "
                             "reproduce that")
        return lay.fmt("fold_last", y[len(lay.x2):], q)
    raise ForgeError("the chat template puts the system message where a Go template over .Messages cannot "
                     "(neither first nor in the first or last user turn)")


def _head_without_system(fmt: TurnFormat, lay: _Layout) -> TurnFormat:
    """What comes before the first user turn when there is no system message: the user prefix, a default system
    prompt, or fixed text in place of a system block (filled into ``fmt``)."""
    h, user_pre, bos = lay.h, lay.user_pre, lay.bos
    if fmt.system_mode == "fold_first":
        first = user_pre[len(bos):] if fmt.bos_repeat else user_pre
        if h != first:
            head = first + fmt.sys_pre
            if not (h.startswith(head) and h.endswith(fmt.sys_suf) and len(h) >= len(head) + len(fmt.sys_suf)):
                raise ForgeError("the chat template renders the first user turn in a way we cannot reproduce "
                                 f"({h!r} before it); a Go template cannot express that")
            fmt.default_system = h[len(head): len(h) - len(fmt.sys_suf)]
    elif fmt.system_mode == "fold_last":
        if h not in lay.firsts:
            raise ForgeError("the chat template adds text before the first user turn that we cannot reproduce "
                             f"({h!r})")
        fmt.bos_repeat = h != user_pre
    elif h in lay.firsts:
        fmt.bos_repeat = h != user_pre
    else:
        tail = fmt.sys_suf + user_pre
        if not (h.startswith(fmt.sys_pre) and h.endswith(tail) and len(h) >= len(fmt.sys_pre) + len(tail)):
            if user_pre and h.endswith(user_pre):
                # fixed text in place of a system block (not a system prompt a SYSTEM line could carry)
                fmt.no_sys_head = h[: len(h) - len(user_pre)]
                return fmt
            raise ForgeError("the chat template adds text before the first user turn that is neither the user "
                             f"prefix nor a default system block ({h!r}); a Go template cannot reproduce that")
        fmt.default_system = h[len(fmt.sys_pre): len(h) - len(tail)]
    return fmt


# -- stops ------------------------------------------------------------------------------------------------------------
_TAG = re.compile(r"(?<!<)(?:<\|[^|\s<>]+\|>|</?[A-Za-z_][A-Za-z0-9_.\-]*>|\[/?[A-Z]{2,}\])(?!>)")


def _good_stop(s: str) -> bool:
    return len(s) >= 2 and not s.isspace() and any(not (c.isalnum() or c.isspace()) for c in s)


def stop_strings(fmt: TurnFormat, extra_tokens: list[str] = ()) -> list[str]:
    """Every string that ends an assistant turn, then the role-header markers Ollama also stops on."""
    stops: list[str] = []

    def add(s: str) -> None:
        if s and _good_stop(s) and s not in stops:
            stops.append(s)

    end = fmt.asst_suf.strip()
    if end:
        tags = _TAG.findall(end)
        add(tags[0] if tags and end.startswith(tags[0]) else end)
        if tags and end.startswith(tags[0]) and len(end) > len(tags[0]):
            add(end)  # whole suffix too, when it is more than one marker
    for tok in extra_tokens:
        add(tok)
    nxt = fmt.user_pre[len(fmt.bos):] if fmt.bos_repeat else fmt.user_pre
    if not end and nxt.strip():
        # no marker after a reply (only whitespace): the next user header ("### Instruction", "User:") ends it
        add(nxt.strip().splitlines()[0].strip())
    for part in (nxt, fmt.gen):
        for tag in _TAG.findall(part):
            if tag != fmt.bos:
                add(tag)
    return stops


# -- translate + verify -----------------------------------------------------------------------------------------------
def _diff(a: str, b: str) -> str:
    n = len(_lcp(a, b))
    lo = max(0, n - 25)
    return f"Jinja renders {a[lo:n + 25]!r}, the Go template {b[lo:n + 25]!r}"


#: seconds all the renderings of one translation may take together (real templates: well under a second)
TRANSLATE_SECONDS = 60.0


#: the day a template that writes today's date is rendered on while it is translated and proven; its date text in
#: literal pieces becomes ``{{ currentDate }}`` (Ollama's function: the server's day as YYYY-MM-DD)
DATE_PROBE = datetime(2087, 11, 29, 13, 14, 15)
DATE_PROBE_TEXT = "2087-11-29"
_DATE_MODE: contextvars.ContextVar[bool] = contextvars.ContextVar("gguf_forge_date_mode", default=False)
DATE_NOTE = ("today's date: the chat template writes it with strftime_now(\"%Y-%m-%d\"); the TEMPLATE writes Ollama's "
             "{{ currentDate }} (the Ollama server's day, YYYY-MM-DD), checked by rendering both on the same day")


def translate(template: str, *, bos: str = "", eos: str = "", system: str | None = None,
              extra_stop_tokens: list[str] = (), strip_bos: bool = True, require_tools: bool = False,
              tool_template: str | None = None) -> Translation:
    """:func:`_translate` after checking that the templates parse (a syntax error is said as one), with every
    rendering it does sharing one time budget (:data:`TRANSLATE_SECONDS`), so a template that stays just under the
    per-render limit cannot keep it busy for the hundreds of renderings it does."""
    for source in (template, tool_template):
        if source is not None:
            chat_template.compile_template(source)
    with chat_template.time_budget(TRANSLATE_SECONDS, "while it is rendered on the conversations that prove the "
                                   "Modelfile's TEMPLATE"):
        try:
            return _translate_dated(template, bos=bos, eos=eos, system=system,
                                    extra_stop_tokens=extra_stop_tokens, strip_bos=strip_bos,
                                    require_tools=require_tools, tool_template=tool_template)
        except ForgeError as e:
            if "fails on one user message" in str(e) and _renders_only_with_tools(template, bos, eos):
                raise ForgeError(f"{e} (it renders only when a request has tools: a model's second, tool_use "
                                 "template; give its default chat template with --template, or both as "
                                 "tokenizer_config.json's named templates)") from None
            raise


def _renders_only_with_tools(template: str, bos: str, eos: str) -> bool:
    """Whether ``template`` renders one user message once tools are given (a ``tool_use`` template: Hermes,
    Command R), having failed without."""
    tool = {"type": "function", "function": {"name": "f", "description": "F.", "parameters": {
        "type": "object", "properties": {}}}}
    try:
        chat_template.render(template, [_m("user", "Hi")], bos_token=bos, eos_token=eos, tools=[tool])
    except ForgeError:
        return False
    return True


def _translate_dated(template: str, *, bos: str, eos: str, system: str | None, extra_stop_tokens: list[str],
                     strip_bos: bool, require_tools: bool, tool_template: str | None) -> Translation:
    """Translate a Jinja chat template to an Ollama Go template and prove it on the conversation suite (see
    :func:`_translate`). Today's date, one rule for every template: written as YYYY-MM-DD it becomes Ollama's
    ``{{ currentDate }}`` (proven by rendering the Jinja template and the TEMPLATE on the same day); in any other
    format, or in the default system prompt (SYSTEM is not a template), it is refused with the fix (a copy of the
    template with the date fixed, or ``--system``)."""
    if not _writes_iso_date(template, bos, eos, system):
        return _translate(template, bos=bos, eos=eos, system=system, extra_stop_tokens=extra_stop_tokens,
                          strip_bos=strip_bos, require_tools=require_tools, tool_template=tool_template)
    token = _DATE_MODE.set(True)
    try:
        with chat_template.fixed_today(DATE_PROBE):
            tr = _translate(template, bos=bos, eos=eos, system=system, extra_stop_tokens=extra_stop_tokens,
                            strip_bos=strip_bos, require_tools=require_tools, tool_template=tool_template)
    finally:
        _DATE_MODE.reset(token)
    if DATE_PROBE_TEXT in (tr.system or "") or any(DATE_PROBE_TEXT in s for s in tr.stops):
        raise ForgeError("the chat template writes today's date into its default system prompt, which becomes the "
                         "Modelfile's SYSTEM (plain text, not a template): the date would be frozen. Give your own "
                         "system prompt with --system, or a copy of the template with the date fixed with "
                         "--template FILE.jinja")
    if DATE_PROBE_TEXT in tr.go_template:
        raise ForgeError("internal: the probe date was left in the TEMPLATE")
    tr.writes_date = True
    tr.notes.append(DATE_NOTE)
    return tr


def _translate(template: str, *, bos: str = "", eos: str = "", system: str | None = None,
               extra_stop_tokens: list[str] = (), strip_bos: bool = True, require_tools: bool = False,
               tool_template: str | None = None) -> Translation:
    """Translate a Jinja chat template to an Ollama Go template and prove it on the conversation suite.

    ``require_tools``: a tools/thinking part that cannot be reproduced is an error instead of a TEMPLATE without
    tools (and a warning). ``tool_template``: the model's separate ``tool_use`` template (Hermes 2 Pro), used for
    requests with tools as transformers and llama.cpp do. ``system`` overrides the template's default system prompt
    (it becomes the Modelfile's SYSTEM). A leading BOS is left out of the Go template when ``strip_bos`` (Ollama
    adds BOS when the GGUF's
    ``tokenizer.ggml.add_bos_token`` is true) and kept otherwise. Raises :class:`ForgeError` naming the
    construct when the Go template would render anything differently.
    """
    fmt = infer_format(template, bos, eos, strip_bos)
    if fmt.system_mode in ("drop", "raise") and system:
        raise ForgeError("--system: the chat template " + ("ignores system messages" if fmt.system_mode == "drop" else
                         f"refuses system messages ({fmt.sys_error})") + "; leave --system out or give a template "
                         "that takes a system prompt with --template")
    sys_line = system if system is not None else (fmt.default_system or None)
    r = _Renderer(template, bos, eos, strip_bos)
    warnings: list[str] = []
    notes: list[str] = []
    if fmt.system_mode == "drop":
        warnings.append("the chat template ignores system messages; so does the Modelfile's template")
    elif fmt.system_mode == "raise":
        warnings.append(f"the chat template refuses system messages ({fmt.sys_error}); so does the Modelfile's "
                        "template: Ollama answers a request with a system message with an error")

    def check(convs: list[tuple[str, list[dict[str, str]]]]) -> str | None:
        for name, msgs in convs:
            if fmt.system_mode == "raise" and any(m["role"] == "system" for m in msgs):
                try:
                    r(msgs, True, name)
                except ForgeError:
                    continue  # both refuse it
                return f"'{name}': the chat template renders a system message here but not in the probe"
            want = r(with_system(msgs, sys_line), True, f"the conversation '{name}'")
            got = render_like_go(fmt, ollama_messages(msgs, sys_line))
            if want != got:
                return f"'{name}': {_diff(want, got)}"
        return None

    trims = False
    probe = [m for m in _WHITESPACE_PROBE if fmt.system_mode != "raise" or m["role"] != "system"]
    problem = check([("whitespace around contents", probe)])
    if problem:
        stripped = [{**m, "content": m["content"].strip()} for m in probe]
        if check([("whitespace around contents, stripped", stripped)]) is None:
            trims = True
            warnings.append("the chat template trims whitespace around message contents (| trim / .strip()); Go "
                            "templates cannot trim, so the Modelfile keeps contents as sent (identical for "
                            "contents without leading/trailing whitespace)")
        else:
            raise ForgeError(f"the chat template cannot be reproduced exactly by an Ollama template: {problem}")
    problem = check(suite(strip=trims))
    if problem:
        raise ForgeError(f"the chat template cannot be reproduced exactly by an Ollama template: {problem}")
    if _drops_reasoning(check, r, fmt, sys_line):
        warnings.append("the chat template drops the <think>...</think> part of earlier replies; Go templates cannot "
                        "cut text, so the Modelfile renders earlier replies as sent (identical when the reasoning is "
                        "not sent back in the reply's content, as Ollama keeps it apart when it parses thinking)")
        notes.append("the original chat template drops <think>...</think> from earlier replies; the TEMPLATE "
                     "renders replies as sent: send them back without their reasoning")
    stops = stop_strings(fmt, list(extra_stop_tokens))
    if not stops:
        raise ForgeError("the chat template has no end-of-turn marker after a reply (no stop string can be "
                         "derived); generation would never stop")
    replies = [m["content"] for _, msgs in suite(strip=trims) for m in msgs if m["role"] == "assistant"]
    bad = [s for s in stops if any(s in reply for reply in replies)]
    stops = [s for s in stops if s not in bad]
    go = go_template(fmt)
    tr = tools.translate_tools(template, fmt, bos=bos, eos=eos, strip_bos=strip_bos, system=sys_line, lit=lit)
    if tool_template and tr.status in ("none", "exact", "exact but JSON whitespace"):
        tr = tools.translate_tool_use(template, tool_template, fmt, tr.go_template or go, bos=bos, eos=eos,
                                      strip_bos=strip_bos, system=sys_line, lit=lit)
    if tr.go_template is not None:
        go = tr.go_template
        if tr.stops:
            stops = tr.stops
        if tr.status == "exact but JSON whitespace":
            notes.append(tools.JSON_NOTE)
        if tr.note:
            notes.append(tr.note)
            warnings.append(tr.note)
    elif tr.status == "refused" and require_tools:
        raise ForgeError("--require-tools: the chat template's tools/thinking cannot be reproduced exactly: "
                         + tr.reason)
    elif tr.status == "refused":
        warnings.append(f"tool calling / thinking left out of the Ollama template: {tr.reason}")
        notes.append("tools and thinking are not in this TEMPLATE (Ollama answers requests with tools \"does not "
                     "support tools\"): the chat template's tool format cannot be reproduced exactly")
    return Translation(fmt=fmt, go_template=go, stops=stops, system=sys_line, trims=trims,
                       warnings=warnings, notes=notes, tools=tr.status, tools_reason=tr.reason)


_THINK = "<think>\nZq7thinkTEXT\n</think>\n\n"


def _drops_reasoning(check: Any, r: _Renderer, fmt: TurnFormat, sys_line: str | None) -> bool:
    """Whether the template cuts ``<think>...</think>`` from earlier replies (Qwen3, DeepSeek-R1); False when it
    keeps replies verbatim. Any other handling of such a reply is an error naming it."""
    reply = _THINK + "Zq7replyONE."
    conv = [_m("user", "Hi"), _m("assistant", reply), _m("user", "Bye")]
    if check([("an earlier reply with a <think> part", conv)]) is None:
        return False
    want = r(with_system(conv, sys_line), True, "an earlier reply with a <think> part")
    answer = reply.split("</think>")[-1]
    for cut in (answer, answer.lstrip("\n"), answer.strip()):
        conv_cut = [conv[0], _m("assistant", cut), conv[2]]
        if want == render_like_go(fmt, ollama_messages(conv_cut, sys_line)):
            return True
    raise ForgeError("the chat template changes earlier replies that contain <think>...</think> in a way a Go "
                     "template cannot reproduce: "
                     + _diff(want, render_like_go(fmt, ollama_messages(conv, sys_line))))


_DATE_DAYS = (datetime(2001, 2, 3, 4, 5, 6), datetime(2002, 12, 30, 20, 30, 40))


def _writes_iso_date(template: str, bos: str, eos: str, system: str | None) -> bool:
    """Whether the template writes today's date (``strftime_now``) as YYYY-MM-DD, the one format Ollama's
    ``currentDate`` writes; a date in any other format is refused (Ollama cannot write it), with the fix. Without
    ``--system`` a conversation without a system message is checked too (the default system prompt's date)."""
    convs = [[_m("system", "Be brief."), _m("user", "Hi")]]
    if system is None:
        convs.append([_m("user", "Hi")])
    iso = False
    for msgs in convs:
        outs = []
        for day in _DATE_DAYS:
            try:
                outs.append(chat_template.render(template, msgs, bos_token=bos, eos_token=eos, today=day))
            except Exception as e:  # noqa: BLE001 - the layout probes report template errors with their context
                if "a limit against hostile templates" in str(e):
                    raise  # a template over a render limit is refused now, not rendered again by every probe
                return iso
        if outs[0] == outs[1]:
            continue
        a, b = (o.replace(d.strftime("%Y-%m-%d"), "\x00") for o, d in zip(outs, _DATE_DAYS))
        if a == b:
            iso = True
            continue
        i = len(_lcp(outs[0], outs[1]))
        shown = outs[0][max(0, i - 20):i + 20]
        where = " in its default system prompt" if len(msgs) == 1 else ""
        raise ForgeError(f"the chat template writes today's date (strftime_now){where} in a format other than "
                         f"YYYY-MM-DD (renders {shown!r} on {_DATE_DAYS[0]:%Y-%m-%d}); Ollama's templates can write "
                         "today's date only as YYYY-MM-DD ({{ currentDate }}), so its output cannot be reproduced. "
                         "Give a copy of the template with the date fixed (e.g. date_string set to a constant) with "
                         "--template FILE.jinja" + (", or your own system prompt with --system" if where else ""))
    return iso


def describe(fmt: TurnFormat) -> dict[str, Any]:
    """The inferred parts, for ``--json`` and error reports."""
    return {k: getattr(fmt, k) for k in fmt.__dataclass_fields__}
