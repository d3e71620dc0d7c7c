"""Chat templates: the one place that finds, loads and renders a model's Jinja chat template.

Conversion (the end-of-turn token), Modelfile writing, chat and imatrix calibration all go through here, so a
template renders the same bytes everywhere, the same bytes ``transformers``' ``apply_chat_template`` gives.

Public surface:

- :func:`named_templates` / :func:`named_template`: the templates shipped with gguf-forge (``templates/*.jinja``;
  adding a file adds a name, nothing else to edit).
- :func:`load`: ``--template`` values -> Jinja source, with one precedence: Jinja text as given, then an existing
  file, then a named template.
- :func:`from_hf_dir`: a Hugging Face folder's template (``chat_template.jinja``, then ``chat_template.json``, then
  ``tokenizer_config.json``); :func:`templates_from_hf_dir`: all its named ones (``tool_use``...);
  :func:`pick_default`: the ``default`` entry of a list of named templates.
- :func:`resolve`: the template a run uses: the user's choice when given, else the model's.
- :func:`compile_template` / :func:`render`: compile / render in the one sandboxed environment
  (:func:`environment`), as transformers does, within limits on size, work and time (:data:`MAX_CHARS`,
  :data:`MAX_WORK`, :data:`MAX_SECONDS`, :data:`MAX_RANGE`, :data:`MAX_INT_BITS`, :data:`MAX_SOURCE`): a hostile
  template is a one-line ForgeError, not a machine out of memory (:class:`TemplateLimitError` inside).
- :func:`turn_end`: the text the template writes right after an assistant reply (where the end-of-turn token is).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import re
import threading
import time
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import jinja2
import jinja2.ext  # not imported by ``import jinja2`` itself
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from .errors import ForgeError
from .files import read_json_object, read_text_file

_PACKAGE = "gguf_forge"
_FOLDER = "templates"
SENTINEL_REPLY = "\u2063SENTINEL-REPLY\u2063"


# ---------------------------------------------------------------------------------------------- finding


def named_templates() -> list[str]:
    """Names accepted by ``--template``: the files ``gguf_forge/templates/<name>.jinja``."""
    folder = resources.files(_PACKAGE).joinpath(_FOLDER)
    return sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja"))


def named_template(name: str) -> str:
    """The Jinja source of the named template ``name``; a ForgeError listing the names when there is none."""
    if name not in named_templates():
        raise ForgeError(f"{name}: no such named chat template; named templates: {', '.join(named_templates())}")
    return resources.files(_PACKAGE).joinpath(_FOLDER, f"{name}.jinja").read_text(encoding="utf-8")


def is_jinja_source(text: str) -> bool:
    """Whether ``text`` is template source rather than a name or a path."""
    return "{{" in text or "{%" in text


def load(spec: str) -> str:
    """Jinja source for a ``--template`` value.

    Precedence, the same for every command: text that is Jinja source is used as given; then an existing file
    (read as UTF-8); then a named template. Anything else is a ForgeError naming the choices.
    """
    if is_jinja_source(spec):
        return spec
    path = Path(spec).expanduser()
    if path.is_file():
        text = read_text_file(path, spec)
        if not text.strip():
            raise ForgeError(f"{spec}: the chat template file is empty")
        return text
    if spec in named_templates():
        return named_template(spec)
    raise ForgeError(f"{spec}: neither a file nor a named template; named templates: {', '.join(named_templates())}")


def pick_default(value: Any) -> str | None:
    """A template value from tokenizer_config.json / chat_template.json / GGUF: a string, or a list of named
    templates (``[{"name": "default", "template": ...}, {"name": "tool_use", ...}]``) whose default is taken."""
    if isinstance(value, list):
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) and value.strip() else None


def from_hf_dir(folder: Path) -> str | None:
    """The chat template of a Hugging Face folder: ``chat_template.jinja``, else ``chat_template.json``, else the
    ``chat_template`` of ``tokenizer_config.json`` (the order transformers reads them in); None when it has none.
    Its ``default`` entry where the folder has named templates (:func:`templates_from_hf_dir`)."""
    return pick_default(as_named_list(templates_from_hf_dir(folder)))


#: transformers' folder of named templates beside ``chat_template.jinja`` (``additional_chat_templates/NAME.jinja``)
ADDITIONAL_DIR = "additional_chat_templates"


def templates_from_hf_dir(folder: Path) -> dict[str, str]:
    """Every chat template of a Hugging Face folder by name (``default`` for the plain one), read as transformers
    reads them: ``chat_template.jinja`` (``default``) and ``additional_chat_templates/NAME.jinja`` when either
    exists (they replace tokenizer_config.json's), else ``chat_template.json``'s ``chat_template``, else
    tokenizer_config.json's: a text (``default``) or a list of ``{"name": ..., "template": ...}`` (Hermes 2 Pro's
    ``default`` + ``tool_use``). A value of another shape is a ForgeError naming the file."""
    folder = Path(folder)
    named: dict[str, str] = {}
    if (folder / "chat_template.jinja").is_file():
        named["default"] = read_text_file(folder / "chat_template.jinja")
    extra = folder / ADDITIONAL_DIR
    for path in sorted(extra.glob("*.jinja")) if extra.is_dir() else []:
        if path.is_file():
            named[path.name.removesuffix(".jinja")] = read_text_file(path)
    if named:
        return named
    for name in ("chat_template.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            value = read_json_object(folder / name).get("chat_template")
            if value is None:
                continue
            check_template_value(value, folder / name)
            if isinstance(value, str):
                return {"default": value}
            return {t["name"]: t["template"] for t in value if t["template"] is not None}
    return {}


def as_named_list(templates: dict[str, str]) -> list[dict[str, str]]:
    """``{name: template}`` as the list of ``{"name": ..., "template": ...}`` tokenizer_config.json and gguf-py use."""
    return [{"name": k, "template": v} for k, v in templates.items()]


def check_template_value(value: Any, where: object) -> None:
    """A ``chat_template`` value read from ``where`` is None, text, or a list of named templates
    (``{"name": ..., "template": ...}``); anything else (a number, an object, a list of junk) is a one-line ForgeError
    rather than a model treated as having no template."""
    if value is None or isinstance(value, str):
        return
    if isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                       and isinstance(t.get("template"), (str, type(None))) for t in value):
        return
    kind = {bool: "true/false", int: "a number", float: "a number", dict: "an object", list: "a list of other things"}
    raise ForgeError(f"{where}: chat_template must be text or a list of {{\"name\": ..., \"template\": ...}}, got "
                     f"{kind.get(type(value), type(value).__name__)}")


def resolve(spec: str | None, model_template: str | None) -> str | None:
    """The template a run uses: ``spec`` (see :func:`load`) when the user gave one, else the model's own."""
    return load(spec) if spec else pick_default(model_template)


# ---------------------------------------------------------------------------------------------- rendering
#
# A chat template is code written by a model's author, and converting, chatting with or calibrating on an untrusted
# model runs it. The sandbox (jinja2's, as transformers uses) keeps it away from Python's internals; the limits below
# keep it from exhausting memory or time. Every value the template makes (text, list) is checked before it is made
# where it could grow without bound (``*``, ``+``, ``~``, ``%``, ``format``, ``join``, ``replace``, ``indent``,
# ``center``, ``tojson``...), every value it makes is checked after, everything it makes is counted against a work
# budget, loops and calls look at the clock. Real templates write a prompt of a few kilobytes to a few megabytes in
# milliseconds: far below every limit.

#: characters of a template's source (compiling takes about a second per 50,000 characters of dense tags)
MAX_SOURCE = 2**20
#: characters (or items) of any one value a template makes, and of its output; grows with a very large input
MAX_CHARS = 16 * 2**20
#: characters and items a template may make in all during one render (text made and dropped counts too)
MAX_WORK = 256 * 2**20
#: seconds one render may take
MAX_SECONDS = 10.0
#: items of one ``range()`` (jinja2's own sandbox limit)
MAX_RANGE = 100_000
#: bits of a number a template makes with ``*`` or ``**``
MAX_INT_BITS = 4096

_SIZED = (str, bytes, list, tuple, dict, set, frozenset)
_BUDGET = threading.local()  # (deadline, message) shared by every render inside :func:`time_budget`
_LOOP_CHECK = 1024  # a loop looks at the clock every this many items (and shorter sequences are not wrapped)
_SPEC_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?")
_SPEC_BRACE = re.compile(r"\{[^{}]*?:([^{}]*)\}")
_SPEC_NESTED = re.compile(r"\{[^{}]*?:[^{}]*\{")  # "{:{width}}": a width taken from the arguments


class TemplateLimitError(jinja2.TemplateError):
    """A chat template went over a render limit (:data:`MAX_CHARS`, :data:`MAX_WORK`, :data:`MAX_SECONDS`,
    :data:`MAX_RANGE`, :data:`MAX_INT_BITS`); its message says which, in one line. :func:`render` turns it into a
    ForgeError."""


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask marker) renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _text_size(value: Any, stop: int, indent: int = 0) -> int:
    """About how many characters ``str(value)`` (or JSON with ``indent``) of ``value`` takes, counting every
    reference to a shared value again (``[big] * n`` is n times big); counting stops once past ``stop``."""
    total, stack, spaces = 0, [(value, 0)], set()
    while stack and total <= stop:
        x, depth = stack.pop()
        total += indent * depth
        if isinstance(x, (str, bytes)):
            total += len(x) + 2
        elif isinstance(x, (dict, list, tuple, set, frozenset)):
            total += 2 + 4 * len(x)
            if total <= stop:
                items = [*x.keys(), *x.values()] if isinstance(x, dict) else x
                stack.extend((item, depth + 1) for item in items)
        elif isinstance(x, Namespace):  # seen twice: shared or holding itself; nobody writes that out
            total += 14 if id(x) not in spaces else stop + 1
            spaces.add(id(x))
            stack.append((object.__getattribute__(x, "_Namespace__attrs"), depth))
        elif isinstance(x, int):
            total += x.bit_length() // 3 + 2
        else:
            total += 24
    return total


def _length(value: Any) -> int:
    return len(value) if isinstance(value, _SIZED) else 0


def _number(value: Any) -> int:
    """An integer argument's size (widths, counts); 0 for anything else."""
    return abs(value) if isinstance(value, int) else 0


class _CodeGenerator(CodeGenerator):
    """jinja2's code generator with three hooks: ``a ~ b`` joins through the sandbox (size-checked), a slice
    (``text[1:]``, a copy) is counted, and every ``{% for %}`` iterates through :meth:`_Sandbox.guard_loop`
    (which looks at the clock)."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            return super().visit_Getitem(node, frame)
        self.write("environment.made(")
        super().visit_Getitem(node, frame)
        self.write(")")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        guarded = nodes.Call(nodes.EnvironmentAttribute("guard_loop"), [node.iter], [], None, None,
                             lineno=node.lineno)
        super().visit_For(nodes.For(node.target, guarded, node.body, node.else_, node.test, node.recursive,
                                    lineno=node.lineno), frame)


class _Sandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with the render limits; :meth:`start` arms them for one render."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.finalize = self._output_value
        self.limit, self.work, self.spent, self.seconds, self.deadline = MAX_CHARS, MAX_WORK, 0, math.inf, math.inf

    def start(self, input_chars: int = 0) -> None:
        """Arm the limits for one render (an input of many megabytes raises the size limits in proportion)."""
        scale = 1 + 4 * input_chars // MAX_CHARS
        self.limit, self.work, self.spent, self.seconds = MAX_CHARS * scale, MAX_WORK * scale, 0, MAX_SECONDS
        self.deadline = time.monotonic() + self.seconds
        self.over = f"the chat template ran longer than {self.seconds:g} s"
        budget = getattr(_BUDGET, "value", None)
        if budget is not None and budget[0] < self.deadline:
            self.deadline, self.over = budget

    # -- the checks
    def tick(self) -> None:
        """Stop a template that has run past the time limit (of this render, or of a :func:`time_budget`)."""
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(self.over)

    def want(self, size: int, what: str = "a text or list") -> None:
        """Refuse to make a value of ``size`` characters or items when that is over the size limit."""
        if size > self.limit:
            raise TemplateLimitError(f"the chat template makes {what} of more than {self.limit:,} characters")

    def made(self, value: Any) -> Any:
        """Count a value the template made against the size limit and the work budget; returns it."""
        self._count(_length(value))
        return value

    def _count(self, n: int) -> None:
        self.want(n)
        self.spent += n
        if self.spent > self.work:
            raise TemplateLimitError(f"the chat template makes more than {self.work:,} characters of text "
                                     "while rendering")

    def collect(self, items: Any) -> Any:
        """``items`` as a sequence, an iterator read into a list with its text counted as it comes."""
        if isinstance(items, _SIZED) or not hasattr(items, "__iter__"):
            return items
        out, total = [], 0
        for x in items:
            total += _text_size(x, self.limit)
            self.want(total)
            out.append(x)
        return out

    def format_size(self, fmt: str, args: Any) -> int:
        """About how long ``fmt % args`` or ``fmt.format(*args)`` is: every field may repeat every argument,
        widths and precisions included."""
        widths = [w for m in _SPEC_PERCENT.finditer(fmt) for w in m.groups() if w]
        widths += [w for m in _SPEC_BRACE.finditer(fmt) for w in re.findall(r"\d+", m.group(1))]
        if any(len(w) > 9 for w in widths):
            return self.limit + 1
        widest = max((int(w) for w in widths if w.isdigit()), default=0)
        if "*" in widths or _SPEC_NESTED.search(fmt):  # a width taken from the arguments
            widest = max([widest, *(_number(a) for a in args)])
        fields = fmt.count("%") + fmt.count("{")
        return len(fmt) + fields * (_text_size(args, self.limit) + widest)

    # -- what the generated code calls
    def guard_loop(self, iterable: Any) -> Any:
        """A ``{% for %}`` loop's items, looking at the clock every :data:`_LOOP_CHECK` items."""
        self.tick()
        if isinstance(iterable, _SIZED) and len(iterable) < _LOOP_CHECK:
            return iterable
        return self._guarded(iterable)

    def _guarded(self, iterable: Any) -> Any:
        for i, item in enumerate(iterable):
            if i % _LOOP_CHECK == 0:
                self.tick()
            yield item

    def join_values(self, values: tuple[Any, ...]) -> str:
        """``a ~ b ~ c``."""
        self.want(sum(_length(v) if isinstance(v, str) else _text_size(v, self.limit) for v in values))
        return self.made("".join(map(str, values)))

    def concat(self, parts: Any) -> str:  # type: ignore[override]
        """The text of a block (``{% set %}...{% endset %}``, a macro, a filter block), joined."""
        parts = parts if isinstance(parts, list) else list(parts)
        self.want(sum(map(len, parts)))
        return self.made("".join(parts))

    def _output_value(self, value: Any) -> Any:
        """``{{ value }}`` (jinja2's ``finalize``): a list or dict is written as its ``str()``: check its size."""
        if not isinstance(value, str):
            self._count(_text_size(value, self.limit))
        return value

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        if operator == "*":
            seq, n = (left, right) if isinstance(left, _SIZED) else (right, left)
            if isinstance(seq, _SIZED) and isinstance(n, int):
                self.want(len(seq) * n)
            elif isinstance(left, int) and isinstance(right, int):
                self._want_bits(left.bit_length() + right.bit_length())
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            self._want_bits(left.bit_length() * right)
        elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
            self.want(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            self.want(self.format_size(left, right if isinstance(right, tuple) else (right,)))
        return self.made(super().call_binop(context, operator, left, right))

    def _want_bits(self, bits: int) -> None:
        if bits > MAX_INT_BITS:
            raise TemplateLimitError(f"the chat template makes a number of more than {MAX_INT_BITS} bits")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.tick()
        if getattr(__obj, "__func__", None) is _Sandbox.guard_loop:
            return __obj(*args)
        target = getattr(__obj, "__wrapped__", __obj)  # str.format is wrapped by the sandbox
        owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
        if isinstance(owner, (str, bytes)) and name in _STR_METHODS:
            args = _STR_METHODS[name](__self, owner, *args, **kwargs) or args
        elif isinstance(owner, int) and name == "to_bytes":
            __self.want(_number(args[0] if args else kwargs.get("length", 1)))
        return __self.made(super().call(__context, __obj, *args, **kwargs))


# -- size checks before a str method makes its result: (environment, the string, *arguments) -> None, or the
# -- arguments to use instead (an iterator read into a list)
def _check_width(env: _Sandbox, s: Any, width: Any = 0, *args: Any, **kwargs: Any) -> None:
    env.want(max(len(s), _number(width)))


def _check_expandtabs(env: _Sandbox, s: Any, tabsize: Any = 8) -> None:
    env.want(len(s) + s.count("\t" if isinstance(s, str) else b"\t") * _number(tabsize))


def _check_replace(env: _Sandbox, s: Any, old: Any = "", new: Any = "", count: Any = -1, **kwargs: Any) -> None:
    s, old, new = (x if isinstance(x, (str, bytes)) else str(x) for x in (s, old, new))
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    env.want(len(s) + n * len(new))


def _check_join(env: _Sandbox, sep: Any, *args: Any) -> tuple[Any, ...] | None:
    if not args:
        return None
    items = env.collect(args[0])
    env.want(_text_size(items, env.limit) + len(str(sep)) * _length(items))
    return (items, *args[1:])


def _check_translate(env: _Sandbox, s: Any, table: Any = None) -> None:
    longest = max((_length(v) for v in table.values()), default=1) if isinstance(table, dict) else 1
    env.want(len(s) * max(longest, 1))


def _check_format(env: _Sandbox, s: Any, *args: Any, **kwargs: Any) -> None:
    values = (*args, *kwargs.values(), *(v for a in args if isinstance(a, dict) for v in a.values()))
    env.want(env.format_size(str(s), values))


_STR_METHODS: dict[str, Callable[..., Any]] = {
    "center": _check_width, "ljust": _check_width, "rjust": _check_width, "zfill": _check_width,
    "expandtabs": _check_expandtabs, "replace": _check_replace, "join": _check_join, "translate": _check_translate,
    "format": _check_format, "format_map": _check_format,
}


# -- size checks before a filter makes its result: (environment, value, *arguments) -> None, or the value to use
# -- instead (an iterator read into a list)
def _filter_center(env: _Sandbox, value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> None:
    env.want(max(_text_size(value, env.limit), _number(width)))


def _filter_indent(env: _Sandbox, s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    s = str(s)
    env.want(len(s) + (s.count("\n") + 1) * (len(width) if isinstance(width, str) else _number(width)))


def _filter_wordwrap(env: _Sandbox, s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None,
                     *args: Any, **kwargs: Any) -> None:
    s = str(s)
    env.want(len(s) + (len(s) // max(_number(width), 1) + 1) * len(str(wrapstring or "\n")))


def _filter_replace(env: _Sandbox, s: Any, old: Any = "", new: Any = "", count: Any = None) -> None:
    _check_replace(env, str(s), old, new, -1 if count is None else count)


def _filter_join(env: _Sandbox, value: Any, d: Any = "", attribute: Any = None) -> Any:
    return _check_join(env, d, value)[0]  # type: ignore[index]


def _filter_sum(env: _Sandbox, value: Any, attribute: Any = None, start: Any = 0) -> Any:
    value = env.collect(value)
    env.want(_text_size(value, env.limit) + _text_size(start, env.limit))
    return value


def _filter_text(env: _Sandbox, value: Any, *args: Any, **kwargs: Any) -> None:
    env.want(_text_size(value, env.limit))


def _filter_tojson(env: _Sandbox, value: Any, ensure_ascii: Any = False, indent: Any = None, *args: Any,
                   **kwargs: Any) -> None:
    env.want(_text_size(value, env.limit, len(indent) if isinstance(indent, str) else _number(indent) + 1))


def _filter_format(env: _Sandbox, value: Any, *args: Any, **kwargs: Any) -> None:
    env.want(env.format_size(str(value), (*args, *kwargs.values())))


def _filter_count(env: _Sandbox, value: Any, count: Any = 1, *args: Any, **kwargs: Any) -> None:
    env.want(_length(value) + _number(count))


_FILTERS: dict[str, Callable[..., Any]] = {
    "center": _filter_center, "indent": _filter_indent, "wordwrap": _filter_wordwrap, "replace": _filter_replace,
    "join": _filter_join, "sum": _filter_sum, "string": _filter_text, "pprint": _filter_text,
    "tojson": _filter_tojson, "format": _filter_format, "batch": _filter_count, "slice": _filter_count,
}


def _checked_filter(env: _Sandbox, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a filter) with the clock, its own size check before (``_FILTERS``) and the size check after."""
    check = _FILTERS.get(name)
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context / environment first

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        env.tick()
        if check is not None and len(args) > skip:
            value = check(env, *args[skip:], **kwargs)
            if value is not None:
                args = (*args[:skip], value, *args[skip + 1:])
        return env.made(func(*args, **kwargs))

    return checked


#: the day ``strftime_now`` sees when a render gives no ``today`` (:func:`fixed_today`; else the clock's)
_TODAY: contextvars.ContextVar[datetime | None] = contextvars.ContextVar("gguf_forge_today", default=None)


@contextlib.contextmanager
def fixed_today(day: datetime) -> Iterator[None]:
    """Renders inside this block see ``day`` as today (``strftime_now``), unless a render passes its own ``today``
    (the Modelfile translator proves a TEMPLATE that writes today's date on one known day)."""
    token = _TODAY.set(day)
    try:
        yield
    finally:
        _TODAY.reset(token)


def fixed_day() -> datetime | None:
    """The day set by :func:`fixed_today`, or None (the clock's)."""
    return _TODAY.get()


def _globals(env: _Sandbox, today: datetime | None) -> dict[str, Any]:
    """The template's functions: transformers' ``raise_exception`` and ``strftime_now``, and jinja2's own with
    ``range`` and ``lipsum`` capped."""

    def strftime_now(fmt: str) -> str:
        env.want(len(str(fmt)) + str(fmt).count("%") * 64)
        return (today or _TODAY.get() or datetime.now()).strftime(fmt)

    def range_(*args: int) -> range:
        rng = range(*args)
        if len(rng) > MAX_RANGE:
            raise TemplateLimitError(f"the chat template asks for range() of {len(rng):,} items; the limit is "
                                     f"{MAX_RANGE:,}")
        return rng

    lipsum = env.globals["lipsum"]

    def lipsum_(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        env.want(_number(n) * _number(max) * 16)
        return lipsum(n, html, min, max)

    return {"raise_exception": _raise_exception, "strftime_now": strftime_now, "range": range_, "lipsum": lipsum_}


def environment(today: datetime | None = None) -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja environment chat templates run in, configured as transformers configures its own:
    ``trim_blocks``, ``lstrip_blocks``, loop controls, ``tojson`` without HTML escaping, ``raise_exception`` and
    ``strftime_now`` (which sees ``today`` when given, else the clock); with the render limits (see
    :data:`MAX_CHARS`), armed for each render by :func:`render`."""
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.filters = {name: _checked_filter(env, name, f) for name, f in env.filters.items()}
    env.globals.update(_globals(env, today))
    return env


def compile_template(template: str, today: datetime | None = None) -> jinja2.Template:
    """``template`` compiled in the one environment; a template that does not parse, or is longer than
    :data:`MAX_SOURCE` characters, is a ForgeError. Compiled once per template (and thread: a render arms its
    environment's limits)."""
    if len(template) > MAX_SOURCE:
        raise ForgeError(f"the chat template is {len(template):,} characters long; more than {MAX_SOURCE:,} is "
                         "refused (a limit against hostile templates)")
    return _compiled(template, today, threading.get_ident())


@functools.lru_cache(maxsize=32)
def _compiled(template: str, today: datetime | None, thread: int) -> jinja2.Template:
    try:
        return environment(today).from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ForgeError(f"the chat template does not parse as Jinja (line {e.lineno}: {e.message})") from None
    except (RecursionError, MemoryError, SyntaxError) as e:  # Python's own limits on nesting
        raise ForgeError(f"the chat template is nested too deeply to compile ({type(e).__name__}: "
                         f"{_one_line(e)})") from None


@contextlib.contextmanager
def time_budget(seconds: float, what: str) -> Iterator[None]:
    """Every render inside shares one deadline, ``seconds`` from now: a command that renders a template hundreds of
    times (``quantize modelfile``'s proofs) stays bounded when each render stays just under :data:`MAX_SECONDS`.
    ``what`` names the work in the one-line error."""
    outer = getattr(_BUDGET, "value", None)
    deadline = time.monotonic() + seconds
    if outer is None or deadline < outer[0]:
        _BUDGET.value = (deadline, f"the chat template took more than {seconds:g} s in all {what}")
    try:
        yield
    finally:
        _BUDGET.value = outer


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).splitlines()) or type(error).__name__


def render(template: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", today: datetime | None = None, **variables: Any) -> str:
    """Render ``template`` for ``messages`` (OpenAI-style dicts) exactly as ``apply_chat_template(tokenize=False)``.

    ``variables`` reach the template as they are (``tools``, ``enable_thinking``...); ``tools`` and ``documents``
    are None unless given, as transformers passes them (``{% if tools is not none %}`` is false). A template that
    does not parse, raises while rendering, or goes over a render limit (:data:`MAX_CHARS` of output or of any
    value, :data:`MAX_WORK`, :data:`MAX_SECONDS`, :data:`MAX_RANGE`) is a one-line ForgeError.
    """
    compiled = compile_template(template, today)
    variables = {"messages": alias_reasoning(messages), "add_generation_prompt": add_generation_prompt,
                 "bos_token": bos_token, "eos_token": eos_token, "tools": None, "documents": None, **variables}
    env = compiled.environment
    assert isinstance(env, _Sandbox)
    env.start(_text_size(variables, MAX_CHARS * 64))
    out: list[str] = []
    size = 0
    try:
        for piece in compiled.generate(**variables):
            size += len(piece)
            env.want(size, "an output")
            out.append(piece)
    except TemplateLimitError as e:
        raise ForgeError(f"{e}; refused (a limit against hostile templates)") from None
    except jinja2.TemplateError as e:  # raise_exception, an undefined variable used wrongly...
        raise ForgeError(f"the chat template failed to render: {_one_line(e)}") from None
    except RecursionError:
        raise ForgeError("the chat template failed to render: it recurses too deeply") from None
    except MemoryError:
        raise ForgeError("the chat template failed to render: it ran out of memory") from None
    except Exception as e:  # noqa: BLE001 - a template's own fault (a type error, 1/0, an include...)
        raise ForgeError(f"the chat template failed to render: {type(e).__name__}: {_one_line(e)}") from None
    return "".join(out)


#: names a message's reasoning is sent under; templates read ``reasoning_content`` (Qwen3) or ``thinking`` (gpt-oss)
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def alias_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with their reasoning under both names templates read, as transformers' ``apply_chat_template``
    passes them: ``reasoning_content`` set from the first of :data:`REASONING_FIELDS` given, ``thinking`` kept
    when given, else the same text (the caller's messages are not changed)."""
    out = []
    for m in messages:
        if isinstance(m, dict):
            reasoning = next((m[k] for k in REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def turn_end(template: str, *, bos_token: str = "", eos_token: str = "") -> str | None:
    """The text the template writes right after an assistant reply (leading whitespace removed), e.g.
    ``<|im_end|>\\n``; None when the template drops the reply. Render errors are ForgeErrors, never hidden."""
    rendered = render(template, [{"role": "user", "content": "hello"},
                                 {"role": "assistant", "content": SENTINEL_REPLY}],
                      add_generation_prompt=False, bos_token=bos_token, eos_token=eos_token)
    pos = rendered.find(SENTINEL_REPLY)
    if pos < 0:
        return None
    return rendered[pos + len(SENTINEL_REPLY):].lstrip(" \t\r\n")
