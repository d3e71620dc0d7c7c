"""Chat templates: the one place that finds, loads and renders a model's Jinja chat template.

Conversion (the end-of-turn token), Modelfile writing, chat and imatrix calibration all go through here, so a
template renders the same bytes everywhere, the same bytes ``transformers``' ``apply_chat_template`` gives.

Public surface:

- :func:`named_templates` / :func:`named_template`: the templates shipped with gguf-forge (``templates/*.jinja``;
  adding a file adds a name, nothing else to edit).
- :func:`load`: ``--template`` values -> Jinja source, with one precedence: Jinja text as given, then an existing
  file, then a named template.
- :func:`from_hf_dir`: a Hugging Face folder's template (``chat_template.jinja``, then ``chat_template.json``, then
  ``tokenizer_config.json``); :func:`pick_default`: the ``default`` entry of a list of named templates.
- :func:`resolve`: the template a run uses: the user's choice when given, else the model's.
- :func:`compile_template` / :func:`render`: compile / render in the one sandboxed environment
  (:func:`environment`), as transformers does.
- :func:`turn_end`: the text the template writes right after an assistant reply (where the end-of-turn token is).
"""

from __future__ import annotations

import json
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext  # not imported by ``import jinja2`` itself
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ForgeError
from .files import read_json_object

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
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ForgeError(f"{spec}: cannot read it as UTF-8 text ({e})") from None
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
    ``chat_template`` of ``tokenizer_config.json`` (the order transformers reads them in); None when it has none."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        try:
            return pick_default((folder / "chat_template.jinja").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ForgeError(f"{folder / 'chat_template.jinja'}: cannot read it as UTF-8 text ({e})") from None
    if (folder / "chat_template.json").is_file():
        return pick_default(read_json_object(folder / "chat_template.json").get("chat_template"))
    if (folder / "tokenizer_config.json").is_file():
        return pick_default(read_json_object(folder / "tokenizer_config.json").get("chat_template"))
    return None


def resolve(spec: str | None, model_template: str | None) -> str | None:
    """The template a run uses: ``spec`` (see :func:`load`) when the user gave one, else the model's own."""
    return load(spec) if spec else pick_default(model_template)


# ---------------------------------------------------------------------------------------------- rendering


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


def environment(today: datetime | None = None) -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja environment chat templates run in, configured as transformers configures its own:
    ``trim_blocks``, ``lstrip_blocks``, loop controls, ``tojson`` without HTML escaping, ``raise_exception`` and
    ``strftime_now`` (which sees ``today`` when given, else the clock)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: (today or datetime.now()).strftime(fmt)
    return env


def compile_template(template: str, today: datetime | None = None) -> jinja2.Template:
    """``template`` compiled in the one environment; a template that does not parse is a ForgeError."""
    try:
        return environment(today).from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ForgeError(f"the chat template does not parse as Jinja (line {e.lineno}: {e.message})") from None


def render(template: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", today: datetime | None = None, **variables: Any) -> str:
    """Render ``template`` for ``messages`` (OpenAI-style dicts) exactly as ``apply_chat_template(tokenize=False)``.

    ``variables`` reach the template as they are (``tools``, ``enable_thinking``...); ``tools`` and ``documents``
    are None unless given, as transformers passes them (``{% if tools is not none %}`` is false). A template that
    does not parse, or raises while rendering, is a ForgeError.
    """
    compiled = compile_template(template, today)
    variables = {"tools": None, "documents": None, **variables}
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                               eos_token=eos_token, **variables)
    except jinja2.TemplateError as e:  # raise_exception, an undefined variable used wrongly...
        raise ForgeError(f"the chat template failed to render: {e}") from None


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
