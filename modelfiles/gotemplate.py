"""A small interpreter for the subset of Go's ``text/template`` that gguf-forge writes, with Ollama's data.

:func:`translate <gguf_forge.modelfiles.translate.translate>` proves a TEMPLATE before writing it by rendering it
here on the data Ollama builds (:func:`ollama_data`: messages collated as Ollama collates them, tools and tool-call
arguments as Ollama's template package marshals them, the think flags). The tests run the same templates with the
real Go ``text/template`` (tests/go) and check that both agree, so this interpreter is held to Go's behaviour.

Supported: text, ``{{- -}}`` trimming, comments, fields (``.A.B``, ``$.A``, ``$x.A``), variables (``:=``, ``=``),
``if``/``else if``/``else``, ``range`` (with ``$i, $v :=``, over slices and maps in key order, ``else``),
``break``/``continue``, ``define`` (top level) and ``template "name" pipeline`` (recursive; a ``template`` without
a pipeline is refused, as Ollama's template parser refuses it), parenthesised pipelines, string/number/bool
literals, and the functions ``eq ne lt le gt ge and or not len index slice json printf`` (``printf`` with
``%s``/``%d``/``%v``/``%T`` only) plus Ollama's ``currentDate`` (today as YYYY-MM-DD). Methods: ``ToMap`` and ``Len``
of a nested ``properties`` map (Ollama's ``*api.ToolPropertiesMap``). Anything else is a :class:`GoTemplateError`
(never silently different).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from .. import chat_template

__all__ = ["GoMap", "GoPropsMap", "GoTemplateError", "Node", "defines", "go_json", "ollama_data", "parse", "render",
           "think_values", "tool_call_tag"]


class GoTemplateError(Exception):
    """A template this interpreter does not parse, or an execution error (as Go's would be)."""


class GoMap(dict):
    """A Go map: JSON and ``range`` in sorted key order; printed as JSON when it has a String() method (``json``)."""

    def __init__(self, *args: Any, stringer: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stringer = stringer


@dataclass
class GoStruct:
    """A Go struct: fields in declaration order; ``json_fields`` gives (field, json name, omitempty) for json."""

    fields: dict[str, Any]
    json_fields: list[tuple[str, str, bool]] = field(default_factory=list)
    stringer: bool = False


class GoPropType(list):
    """Ollama's ``api.PropertyType`` (a ``[]string``): JSON and printing give the one type as a string, several as a
    list; ``index``, ``len``, ``range`` see the slice."""


class GoPropsMap:
    """Ollama's ``*api.ToolPropertiesMap`` (a nested property's ``properties``): a pointer, nil when the JSON had no
    ``properties``; JSON in insertion order; in a template only its methods ``ToMap`` (a plain map, ranged in key
    order) and ``Len`` work, also on a nil pointer."""

    def __init__(self, om: dict[str, Any] | None) -> None:
        self.om = om

    def method(self, name: str) -> Any:
        if name == "ToMap":
            return None if self.om is None else GoMap(self.om)
        if name == "Len":
            return 0 if self.om is None else len(self.om)
        if name in ("Get", "All", "Set"):
            raise GoTemplateError(f"can't call method {name} of *api.ToolPropertiesMap here")
        raise GoTemplateError(f"can't evaluate field {name} in type *api.ToolPropertiesMap")


# -- JSON as Go's encoding/json writes it -----------------------------------------------------------------------------
def _go_float(x: float) -> str:
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    a = abs(x)
    if a < 1e-6 or a >= 1e21:
        s = f"{x:e}"
        mant, exp = s.split("e")
        mant = repr(float(mant)).rstrip("0").rstrip(".") if "." in repr(float(mant)) else mant
        r = repr(x)
        if "e" in r:
            mant, exp = r.split("e")
        e = int(exp)
        return f"{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"
    return repr(x)


def _go_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch in "<>&" or o in (0x2028, 0x2029) or o < 0x20:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _empty(v: Any) -> bool:
    if isinstance(v, GoPropsMap):
        return v.om is None  # a nil pointer
    return v is None or v is False or v == 0 and not isinstance(v, bool) and isinstance(v, (int, float)) or (
        isinstance(v, (str, list, dict)) and len(v) == 0)


def go_json(v: Any) -> str:
    """``json.Marshal`` of a Go value built from GoMap / GoStruct / list / str / float / bool / None."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise GoTemplateError("json: unsupported value")
        return _go_float(v)
    if isinstance(v, str):
        return _go_string(v)
    if isinstance(v, GoPropType):
        return go_json(v[0]) if len(v) == 1 else "[" + ",".join(go_json(x) for x in v) + "]"
    if isinstance(v, GoPropsMap):
        if v.om is None:
            return "null"
        return "{" + ",".join(_go_string(k) + ":" + go_json(x) for k, x in v.om.items()) + "}"
    if isinstance(v, GoStruct):
        parts = []
        for name, key, omit in v.json_fields:
            value = v.fields[name]
            if omit and _empty(value):
                continue
            parts.append(_go_string(key) + ":" + go_json(value))
        return "{" + ",".join(parts) + "}"
    if isinstance(v, dict):
        return "{" + ",".join(_go_string(k) + ":" + go_json(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(go_json(x) for x in v) + "]"
    raise GoTemplateError(f"json: cannot marshal {type(v).__name__}")


def _from_json(v: Any) -> Any:
    """A JSON value as Go's ``map[string]any`` decoding gives it (numbers are float64, maps unordered)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return GoMap({k: _from_json(x) for k, x in v.items()})


# -- Ollama's data ----------------------------------------------------------------------------------------------------
_PROP_FIELDS = [("AnyOf", "anyOf", True), ("Type", "type", True), ("Items", "items", True),
                ("Description", "description", True), ("Enum", "enum", True), ("Properties", "properties", True),
                ("Required", "required", True)]


def _prop(p: dict[str, Any]) -> GoStruct:
    typ = p.get("type")
    typ = [typ] if isinstance(typ, str) else list(typ or [])
    props = p.get("properties")
    return GoStruct({"AnyOf": [_prop(x) for x in p.get("anyOf") or []],
                     "Type": GoPropType(typ),
                     "Items": _from_json(p.get("items")), "Description": p.get("description", ""),
                     "Enum": _from_json(p.get("enum")) or [],
                     "Properties": GoPropsMap({k: _prop(x) for k, x in props.items()} if props is not None
                                              else None),
                     "Required": list(p.get("required") or [])}, _PROP_FIELDS)


def _tool(t: dict[str, Any]) -> GoStruct:
    f = t.get("function") or {}
    p = f.get("parameters") or {}
    params = GoStruct({"Type": p.get("type", ""), "Defs": _from_json(p.get("$defs")),
                       "Items": _from_json(p.get("items")), "Required": list(p.get("required") or []),
                       "Properties": GoMap({k: _prop(x) for k, x in (p.get("properties") or {}).items()},
                                           stringer=True)},
                      [("Type", "type", False), ("Defs", "$defs", True), ("Items", "items", True),
                       ("Required", "required", True), ("Properties", "properties", False)])
    func = GoStruct({"Name": f.get("name", ""), "Description": f.get("description", ""), "Parameters": params},
                    [("Name", "name", False), ("Description", "description", False),
                     ("Parameters", "parameters", False)])
    return GoStruct({"Type": t.get("type", ""), "Items": _from_json(t.get("items")), "Function": func},
                    [("Type", "type", False), ("Items", "items", True), ("Function", "function", False)],
                    stringer=True)


def _message(m: dict[str, Any]) -> GoStruct:
    calls = []
    for c in m.get("tool_calls") or []:
        f = c.get("function") or {}
        args = f.get("arguments") or {}
        if isinstance(args, str):
            args = json.loads(args)
        calls.append(GoStruct({"ID": c.get("id", ""), "Function": GoStruct(
            {"Index": f.get("index", 0), "Name": f.get("name", ""),
             "Arguments": GoMap({k: _from_json(v) for k, v in args.items()}, stringer=True)})}))
    return GoStruct({"Role": m["role"], "Content": m.get("content") or "", "Thinking": m.get("thinking", ""),
                     "Images": [], "ToolCalls": calls, "ToolName": m.get("tool_name", ""),
                     "ToolCallID": m.get("tool_call_id", "")})


def think_values(think: bool | str | None) -> tuple[bool, str, bool]:
    """``.Think``, ``.ThinkLevel``, ``.IsThinkSet`` for a request's ``think`` (true/false or "low"/"medium"/"high"):
    what Ollama's ``api.ThinkValue`` gives (``Bool()``; ``String()`` is "medium" for true, "" for false)."""
    if think is None:
        return False, "", False
    if isinstance(think, str):
        return think in ("high", "medium", "low", "max"), think, True
    return bool(think), "medium" if think else "", True


def ollama_data(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                think: bool | str | None = None, system: str | None = None) -> dict[str, Any]:
    """What Ollama's server hands a ``.Messages`` template for a chat request (Ollama-shaped messages: ``thinking``,
    ``tool_calls`` with ``function.name``/``arguments``, ``tool_name``): the Modelfile SYSTEM first when the request
    has no system message, consecutive same-role messages (except ``tool``) merged with a blank line, ``.System``
    every system message joined by a blank line."""
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    systems: list[str] = []
    out: list[dict[str, Any]] = []
    for m in msgs:
        if m["role"] == "system":
            systems.append(m.get("content") or "")
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1]["content"] = (out[-1].get("content") or "") + "\n\n" + (m.get("content") or "")
        else:
            out.append(m)
    return {"System": "\n\n".join(systems), "Messages": [_message(m) for m in out],
            "Tools": [_tool(t) for t in tools] if tools else None, "Response": "", "Think": think_values(think)[0],
            "ThinkLevel": think_values(think)[1], "IsThinkSet": think_values(think)[2]}


# -- parsing ----------------------------------------------------------------------------------------------------------
@dataclass
class Node:
    kind: str  # text, action, if, range, break, continue, define (text: name), template (text: name)
    text: str = ""
    pipe: Any = None  # parsed pipeline: (decl_vars, assign, commands)
    body: list[Node] = field(default_factory=list)
    else_body: list[Node] | None = None


_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)|
    (?P<decl>:=)|(?P<assign>=)|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)|
    (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),|]))""", re.X)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v"}


def _unquote(s: str) -> str:
    out, i, body = [], 0, s[1:-1]
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nx = body[i + 1]
        if nx in _ESCAPES:
            out.append(_ESCAPES[nx])
            i += 2
        elif nx == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif nx == "u":
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        elif nx == "U":
            out.append(chr(int(body[i + 2:i + 10], 16)))
            i += 10
        else:
            raise GoTemplateError(f"unknown escape \\{nx}")
    return "".join(out)


def _tokens(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"unsupported action text {src[pos:pos + 20]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _parse_pipeline(tokens: list[tuple[str, str]]) -> Any:
    decl: list[str] = []
    assign = False
    i = 0
    # $x := ... / $i, $v := ... / $x = ...
    j = 0
    names = []
    while j < len(tokens) and tokens[j][0] == "var":
        names.append(tokens[j][1])
        if j + 1 < len(tokens) and tokens[j + 1] == ("punct", ","):
            j += 2
            continue
        j += 1
        break
    if names and j < len(tokens) and tokens[j][0] in ("decl", "assign"):
        decl, assign, i = names, tokens[j][0] == "assign", j + 1
    cmds, cur = [], []
    depth_tokens = tokens[i:]
    k = 0
    while k < len(depth_tokens):
        kind, val = depth_tokens[k]
        if kind == "punct" and val == "|":
            cmds.append(cur)
            cur = []
            k += 1
            continue
        if kind == "punct" and val == "(":
            level, m = 1, k + 1
            while level:
                if m >= len(depth_tokens):
                    raise GoTemplateError("unclosed (")
                if depth_tokens[m] == ("punct", "("):
                    level += 1
                elif depth_tokens[m] == ("punct", ")"):
                    level -= 1
                m += 1
            cur.append(("pipe", _parse_pipeline(depth_tokens[k + 1:m - 1])))
            k = m
            continue
        cur.append((kind, val))
        k += 1
    cmds.append(cur)
    if any(not c for c in cmds):
        raise GoTemplateError("empty command")
    return decl, assign, cmds


def parse(src: str) -> list[Node]:
    """Parse ``src`` into nodes (text with Go's trim markers applied)."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    while True:
        start = src.find("{{", pos)
        if start < 0:
            pieces.append(("text", src[pos:]))
            break
        end = src.find("}}", start + 2)
        if end < 0:
            raise GoTemplateError("unclosed action")
        # a "}}" inside a string literal: search past it
        while True:
            inner = src[start + 2:end]
            if inner.count('"') - inner.count('\\"') * 1 >= 0 and _balanced_quotes(inner):
                break
            end = src.find("}}", end + 2)
            if end < 0:
                raise GoTemplateError("unclosed action")
        inner = src[start + 2:end]
        text = src[pos:start]
        if inner.startswith("- ") or inner.startswith("-\t") or inner.startswith("-\n"):
            text = text.rstrip(" \t\r\n")
            inner = inner[1:]
        trim_right = inner.endswith(" -") or inner.endswith("\t-") or inner.endswith("\n-")
        if trim_right:
            inner = inner[:-1]
        pieces.append(("text", text))
        pieces.append(("action", inner.strip()))
        pos = end + 2
        if trim_right:
            while pos < len(src) and src[pos] in " \t\r\n":
                pos += 1
    nodes, rest = _build(pieces, 0, ())
    if rest != len(pieces):
        raise GoTemplateError("unexpected {{ end }} or {{ else }}")
    return nodes


def _balanced_quotes(inner: str) -> bool:
    in_str, i = False, 0
    while i < len(inner):
        ch = inner[i]
        if in_str and ch == "\\":
            i += 2
            continue
        if ch == '"':
            in_str = not in_str
        i += 1
    return not in_str


def _build(pieces: list[tuple[str, str]], i: int, stops: tuple[str, ...]) -> tuple[list[Node], int]:
    out: list[Node] = []
    while i < len(pieces):
        kind, val = pieces[i]
        if kind == "text":
            if val:
                out.append(Node("text", val))
            i += 1
            continue
        if val.startswith("/*"):
            i += 1
            continue
        word = val.split(None, 1)[0] if val else ""
        if word in ("end", "else") and word in stops:
            return out, i
        if word in ("end", "else"):
            raise GoTemplateError(f"unexpected {{{{ {val} }}}}")
        if word in ("if", "range"):
            node = Node(word, pipe=_parse_pipeline(_tokens(val[len(word):])))
            node.body, i = _build(pieces, i + 1, ("end", "else"))
            if i >= len(pieces):
                raise GoTemplateError(f"unclosed {word}")
            tag = pieces[i][1]
            if tag.startswith("else"):
                rest = tag[4:].strip()
                if rest.startswith("if "):
                    # else if X: an if nested in the else branch, sharing the end
                    pieces = [*pieces[:i], ("action", rest), *pieces[i + 1:]]
                    inner, i = _build_one_if(pieces, i)
                    node.else_body = [inner]
                    out.append(node)
                    continue
                node.else_body, i = _build(pieces, i + 1, ("end",))
                if i >= len(pieces):
                    raise GoTemplateError(f"unclosed {word}")
            out.append(node)
            i += 1
            continue
        if word in ("break", "continue"):
            out.append(Node(word))
            i += 1
            continue
        if word == "define":
            if stops:
                raise GoTemplateError("unexpected {{ define }} inside another action: define is top-level only")
            name = _template_name(val[len(word):], "define")
            node = Node("define", text=name[0])
            if name[1]:
                raise GoTemplateError(f"unexpected text after {{{{ define {name[0]!r} }}}}")
            node.body, i = _build(pieces, i + 1, ("end",))
            if i >= len(pieces):
                raise GoTemplateError("unclosed define")
            out.append(node)
            i += 1
            continue
        if word == "template":
            name, rest = _template_name(val[len(word):], "template")
            if not rest:
                # text/template runs it with a nil dot; Ollama's parser refuses the whole TEMPLATE
                # ("undefined template specified")
                raise GoTemplateError(f'{{{{ template "{name}" }}}} without a pipeline: Ollama refuses it')
            out.append(Node("template", text=name, pipe=_parse_pipeline(rest)))
            i += 1
            continue
        if word in ("with", "block"):
            raise GoTemplateError(f"{{{{ {word} }}}} is not supported here")
        out.append(Node("action", pipe=_parse_pipeline(_tokens(val))))
        i += 1
    if stops:
        raise GoTemplateError("missing {{ end }}")
    return out, i


def _template_name(src: str, what: str) -> tuple[str, list[tuple[str, str]]]:
    toks = _tokens(src)
    if not toks or toks[0][0] not in ("str", "raw"):
        raise GoTemplateError(f"{what}: a template name (a string) must follow")
    name = _unquote(toks[0][1]) if toks[0][0] == "str" else toks[0][1][1:-1]
    return name, toks[1:]


def _build_one_if(pieces: list[tuple[str, str]], i: int) -> tuple[Node, int]:
    """An ``else if`` chain link at ``pieces[i]`` (rewritten to ``if``); returns the node and the index after the
    shared ``end``... the caller's end is consumed here."""
    val = pieces[i][1]
    node = Node("if", pipe=_parse_pipeline(_tokens(val[2:])))
    node.body, i = _build(pieces, i + 1, ("end", "else"))
    if i >= len(pieces):
        raise GoTemplateError("unclosed if")
    tag = pieces[i][1]
    if tag.startswith("else"):
        rest = tag[4:].strip()
        if rest.startswith("if "):
            pieces[i] = ("action", rest)
            inner, i = _build_one_if(pieces, i)
            node.else_body = [inner]
            return node, i
        node.else_body, i = _build(pieces, i + 1, ("end",))
    return node, i + 1


# -- execution --------------------------------------------------------------------------------------------------------
class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _truth(v: Any) -> bool:
    if isinstance(v, GoPropsMap):
        return v.om is not None  # a pointer: true when not nil, even when empty
    if v is None or v is False:
        return False
    if isinstance(v, bool):
        return True
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def _fmt_float(x: float) -> str:
    """Go's ``%v`` of a float64 (strconv 'g' shortest: %e when the exponent is < -4 or >= 6)."""
    if x == 0:
        return "0"
    mant, _, exp = f"{x:e}".partition("e")
    r = repr(abs(x))
    digits = r.split("e")[0].replace(".", "").lstrip("0").rstrip("0") or "0"
    e10 = int(exp)
    if e10 < -4 or e10 >= 6:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{'-' if x < 0 else ''}{m}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"
    return str(int(x)) if x == int(x) else repr(x)


def _print(v: Any, top: bool = True) -> str:
    if v is None:
        return "<no value>" if top else "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _fmt_float(v)
    if isinstance(v, (GoStruct, GoMap)) and v.stringer:
        return go_json(v)
    if isinstance(v, GoPropType):  # its String(): the one type, or fmt's [a b]
        return "" if not v else v[0] if len(v) == 1 else "[" + " ".join(v) + "]"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + " ".join(_print(x, False) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_print(v[k], False)}" for k in sorted(v)) + "]"
    raise GoTemplateError(f"cannot print a {type(v).__name__}")


def _field(v: Any, name: str) -> Any:
    if isinstance(v, GoPropsMap):
        return v.method(name)
    if isinstance(v, GoStruct):
        if name not in v.fields:
            raise GoTemplateError(f"can't evaluate field {name}")
        return v.fields[name]
    if isinstance(v, dict):
        return v.get(name)
    if v is None:
        raise GoTemplateError(f"nil pointer evaluating .{name}")
    raise GoTemplateError(f"can't evaluate field {name} in type {type(v).__name__}")


def _eq(a: Any, *bs: Any) -> bool:
    for b in bs:
        if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                           and not isinstance(a, bool) and not isinstance(b, bool)):
            if a is None or b is None:
                raise GoTemplateError("incompatible types for comparison")
            raise GoTemplateError("incompatible types for comparison")
        if a == b:
            return True
    return False


def _eq_nil(a: Any, *bs: Any) -> bool:
    """Go's eq: a nil interface (a missing map key) against a value is false, not an error."""
    if a is None or any(b is None for b in bs):
        return any(a is b for b in bs)
    return _eq(a, *bs)


def _printf(fmt: str, *args: Any) -> str:
    out, k = [], 0

    def repl(m: re.Match) -> str:
        nonlocal k
        if m.group(0) == "%%":
            return "%"
        v = args[k]
        k += 1
        if m.group(1) == "T":
            return _go_type(v)
        if m.group(1) in ("q", "+q"):
            if not isinstance(v, str):
                raise GoTemplateError("printf %q of a non-string is not supported here")
            return _go_quote(v, ascii_only=m.group(1) == "+q")
        return _print(v, False) if m.group(1) in "sv" else str(int(v))

    out.append(re.sub(r"%%|%([svdT]|\+?q)", repl, fmt))
    return "".join(out)


_QUOTE_ESC = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
              '"': '\\"', "\\": "\\\\"}


def _go_quote(text: str, ascii_only: bool) -> str:
    """Go's ``%q`` (strconv.Quote) / ``%+q`` (QuoteToASCII) of a string."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch in _QUOTE_ESC:
            out.append(_QUOTE_ESC[ch])
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o < 0x80:
            out.append(f"\\x{o:02x}")
        elif not ascii_only and ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out) + '"'


def _len(v: Any) -> int:
    """Go's len: a string's length in bytes (UTF-8)."""
    return len(v.encode("utf-8")) if isinstance(v, str) else len(v)


def _go_type(v: Any) -> str:
    """``%T`` of a value decoded from JSON into ``any`` (what tool-call arguments hold)."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, int):
        return "int"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, list):
        return "[]interface {}"
    return type(v).__name__


def _slice(v: Any, *idx: Any) -> Any:
    ints = [int(i) for i in idx]
    if any(i < 0 or i > len(v) for i in ints) or (len(ints) == 2 and ints[0] > ints[1]):
        raise GoTemplateError(f"error calling slice: index out of range: {ints[-1]}")
    return v[ints[0]:ints[1]] if len(ints) == 2 else v[ints[0]:] if ints else v[:]


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k)
        else:
            if not 0 <= int(k) < len(v):
                raise GoTemplateError(f"error calling index: index out of range: {k}")
            v = v[int(k)]
    return v


_FUNCS = {
    "eq": _eq_nil, "ne": lambda a, b: not _eq_nil(a, b), "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "not": lambda a: not _truth(a), "len": _len,
    "index": _index, "slice": _slice, "json": go_json, "printf": _printf,
}


#: nesting of {{ template }} calls this interpreter follows (Go allows 100000; a schema is never that deep)
MAX_TEMPLATE_DEPTH = 150


class _Exec:
    def __init__(self, data: Any, defines: dict[str, list[Node]] | None = None, today: date | None = None) -> None:
        self.data = data
        self.out: list[str] = []
        self.scopes: list[dict[str, Any]] = [{"$": data}]
        self.steps = 0
        self.defines = defines or {}
        self.today = today
        self.depth = 0

    def var(self, name: str) -> Any:
        for s in reversed(self.scopes):
            if name in s:
                return s[name]
        raise GoTemplateError(f"undefined variable {name}")

    def set_var(self, name: str, value: Any) -> None:
        for s in reversed(self.scopes):
            if name in s:
                s[name] = value
                return
        raise GoTemplateError(f"undefined variable {name}")

    def arg(self, tok: tuple[str, Any], dot: Any, final: Any = None) -> Any:
        kind, val = tok
        if kind == "str":
            return _unquote(val)
        if kind == "raw":
            return val[1:-1]
        if kind == "num":
            return float(val) if "." in val else int(val)
        if kind == "field":
            v = dot
            for name in val.split(".")[1:]:
                if name:
                    v = _field(v, name)
            return v
        if kind == "var":
            parts = val.split(".")
            v = self.var(parts[0])
            for name in parts[1:]:
                v = _field(v, name)
            return v
        if kind == "pipe":
            return self.pipeline(val, dot)
        if kind == "ident":
            if val in ("true", "false"):
                return val == "true"
            if val == "nil":
                return None
            return self.call(val, [], dot, final)
        raise GoTemplateError(f"unexpected {val!r}")

    def call(self, name: str, args: list[tuple[str, Any]], dot: Any, final: Any = None) -> Any:
        if name in ("and", "or"):
            v = None
            for a in args:
                v = self.arg(a, dot)
                if (name == "and") != _truth(v):
                    return v
            if final is not None:
                v = final[0]
            return v
        if name in ("currentDate", "yesterdayDate"):
            values = [self.arg(a, dot) for a in args] + (list(final) if final is not None else [])
            if not all(isinstance(v, str) for v in values):
                raise GoTemplateError(f"wrong type for value; expected string in {name}")
            fixed = chat_template.fixed_day()
            day = self.today or (fixed.date() if fixed else date.today())
            return (day - timedelta(days=1 if name == "yesterdayDate" else 0)).strftime("%Y-%m-%d")
        if name not in _FUNCS:
            raise GoTemplateError(f'function "{name}" not defined here')
        values = [self.arg(a, dot) for a in args] + (list(final) if final is not None else [])
        try:
            return _FUNCS[name](*values)
        except GoTemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - Go reports a bad call as an execution error
            raise GoTemplateError(f"error calling {name}: {e}") from None

    def pipeline(self, pipe: Any, dot: Any) -> Any:
        decl, assign, cmds = pipe
        value: Any = None
        for n, cmd in enumerate(cmds):
            final = (value,) if n else None
            head = cmd[0]
            if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
                value = self.call(head[1], cmd[1:], dot, final)
            else:
                if len(cmd) > 1 or final is not None:
                    raise GoTemplateError("can't give argument to non-function")
                value = self.arg(head, dot)
        if decl and not assign and len(decl) == 1:
            self.scopes[-1][decl[0]] = value
        elif decl and assign:
            self.set_var(decl[0], value)
        return value

    def run(self, nodes: list[Node], dot: Any) -> None:
        for node in nodes:
            self.steps += 1
            if self.steps > 10_000_000:
                raise GoTemplateError("template runs too long")
            if node.kind == "text":
                self.out.append(node.text)
            elif node.kind == "action":
                v = self.pipeline(node.pipe, dot)
                if not node.pipe[0]:
                    self.out.append(_print(v))
            elif node.kind == "if":
                self.scopes.append({})
                try:
                    cond = self.pipeline(node.pipe, dot)
                    if _truth(cond):
                        self.run(node.body, dot)
                    elif node.else_body is not None:
                        self.run(node.else_body, dot)
                finally:
                    self.scopes.pop()
            elif node.kind == "range":
                self._range(node, dot)
            elif node.kind == "template":
                self._template(node, dot)
            elif node.kind == "define":
                pass
            elif node.kind == "break":
                raise _Break()
            elif node.kind == "continue":
                raise _Continue()

    def _template(self, node: Node, dot: Any) -> None:
        if node.text not in self.defines:
            raise GoTemplateError(f"template {node.text!r} not defined")
        value = self.pipeline(node.pipe, dot)
        if self.depth >= MAX_TEMPLATE_DEPTH:
            raise GoTemplateError(f"templates nested deeper than {MAX_TEMPLATE_DEPTH}")
        scopes, self.scopes = self.scopes, [{"$": value}]
        self.depth += 1
        try:
            self.run(self.defines[node.text], value)
        finally:
            self.scopes = scopes
            self.depth -= 1

    def _range(self, node: Node, dot: Any) -> None:
        decl, _, cmds = node.pipe
        self.scopes.append({})
        try:
            seq = self.pipeline((None, False, cmds), dot)
            if isinstance(seq, dict):
                items = [(k, seq[k]) for k in sorted(seq)]
            elif isinstance(seq, (list, tuple)):
                items = list(enumerate(seq))
            elif seq is None:
                items = []
            elif isinstance(seq, int):
                items = [(i, i) for i in range(seq)]
            else:
                raise GoTemplateError(f"range can't iterate over {_print(seq)}")
            if not items:
                if node.else_body is not None:
                    self.run(node.else_body, dot)
                return
            for k, v in items:
                scope = {}
                if len(decl or []) == 2:
                    scope[decl[0]], scope[decl[1]] = k, v
                elif decl:
                    scope[decl[0]] = v
                self.scopes.append(scope)
                try:
                    self.run(node.body, v)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    self.scopes.pop()
        finally:
            self.scopes.pop()


def defines(nodes: list[Node]) -> dict[str, list[Node]]:
    """The templates ``nodes`` define (``{{ define "name" }}``), by name; a name defined twice with non-blank bodies
    is an error, as in Go."""
    out: dict[str, list[Node]] = {}
    for n in nodes:
        if n.kind == "define":
            blank = all(b.kind == "text" and not b.text.strip() for b in n.body)
            if n.text in out and not blank and not all(b.kind == "text" and not b.text.strip() for b in out[n.text]):
                raise GoTemplateError(f"template: multiple definition of template {n.text!r}")
            if n.text not in out or not blank:
                out[n.text] = n.body
    return out


def render(template: str | list[Node], data: Any, today: date | None = None) -> str:
    """Execute ``template`` on ``data`` (see :func:`ollama_data`); errors are :class:`GoTemplateError`. ``today``:
    the day ``currentDate`` writes (default: the clock's)."""
    nodes = parse(template) if isinstance(template, str) else template
    ex = _Exec(data, defines(nodes), today)
    ex.run(nodes, data)
    return "".join(ex.out)


# -- Ollama's tool-call tag -------------------------------------------------------------------------------------------
def _mentions_tool_calls(pipe: Any) -> bool:
    return any(kind == "field" and "ToolCalls" in val.split(".") or kind == "var" and "ToolCalls" in val.split(".")
               for cmd in pipe[2] for kind, val in cmd if isinstance(val, str))


def _find_if(nodes: list[Node]) -> Node | None:
    for n in nodes:
        if n.kind == "if":
            if _mentions_tool_calls(n.pipe):
                return n
            found = _find_if(n.body) or (_find_if(n.else_body) if n.else_body else None)
            if found:
                return found
        elif n.kind == "range":
            found = _find_if(n.body) or (_find_if(n.else_body) if n.else_body else None)
            if found:
                return found
    return None


def _find_text(nodes: list[Node]) -> Node | None:
    for n in nodes:
        if n.kind == "text":
            if n.text.strip():
                return n
        elif n.kind in ("if", "range"):
            found = _find_text(n.body)
            if found is None and n.else_body:
                found = _find_text(n.else_body)
            return found
    return None


def tool_call_tag(template: str) -> str:
    """The tag Ollama's tool parser looks for in a reply (its ``parseTag``): the first non-blank text inside the
    first ``{{ if }}`` on ``.ToolCalls``, cut before ``{`` and trimmed; ``{`` when there is none."""
    node = _find_if(parse(template))
    text = _find_text(node.body) if node else None
    if text is None:
        return "{"
    tag = text.text.replace("\r\n", "\n").split("{", 1)[0].strip()
    return tag or "{"


# -- Ollama's thinking tags -------------------------------------------------------------------------------------------
def _pipe_fields(pipe: Any) -> list[str]:
    """First identifiers of the fields a pipeline names, in order (nested pipelines included)."""
    out: list[str] = []
    for cmd in pipe[2]:
        for kind, val in cmd:
            if kind == "field" and val != ".":
                out.append(val.split(".")[1])
            elif kind == "pipe":
                out += _pipe_fields(val)
    return out


def thinking_tags(template: str) -> tuple[str, str]:
    """The tags Ollama infers around reasoning (its ``thinking.InferTags``): at each ``.Thinking`` inside a range
    over ``.Messages``, the first and last text of the nearest enclosing list, trimmed; the last found wins.
    ("", "") means Ollama sees no thinking support in the TEMPLATE."""
    tags = ["", ""]

    def found(lst: list[Node]) -> None:
        if lst and lst[0].kind == "text":
            tags[0] = lst[0].text.strip()
        if lst and lst[-1].kind == "text":
            tags[1] = lst[-1].text.strip()

    def walk(nodes: list[Node], in_messages: bool) -> None:
        for n in nodes:
            if n.kind == "action" and "Thinking" in _pipe_fields(n.pipe) and in_messages:
                found(nodes)
            elif n.kind in ("if", "range"):
                if "Thinking" in _pipe_fields(n.pipe) and in_messages:
                    found(nodes)  # the field in the pipeline: its nearest list is the one holding the node
                inner = in_messages if n.kind == "if" else "Messages" in _pipe_fields(n.pipe)
                walk(n.body, inner)
                if n.else_body:
                    walk(n.else_body, inner)

    walk(parse(template), False)
    return tags[0], tags[1]
