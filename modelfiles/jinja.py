"""Jinja chat templates: the named ones shipped with gguf-forge, loading from files, rendering as transformers does."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ForgeError

_PACKAGE = "gguf_forge.modelfiles"


def named_templates() -> list[str]:
    """Names accepted by ``--template`` (files ``templates/<name>.jinja`` shipped with the package)."""
    folder = resources.files(_PACKAGE).joinpath("templates")
    return sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja"))


def load_template(spec: str) -> str:
    """Jinja source of a named template (``llama3``, ``chatml``, ...) or of a ``.jinja`` file.

    Raises :class:`ForgeError` naming the choices when ``spec`` is neither.
    """
    if spec in named_templates():
        return resources.files(_PACKAGE).joinpath("templates", f"{spec}.jinja").read_text(encoding="utf-8")
    path = Path(spec)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ForgeError(f"--template {spec}: cannot read it as UTF-8 text ({e})") from None
        if not text.strip():
            raise ForgeError(f"--template {spec}: the file is empty")
        return text
    raise ForgeError(f"--template {spec}: neither a file nor a named template; named templates: "
                     f"{', '.join(named_templates())}")


def render(template: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", today: Any = None) -> str:
    """Render ``template`` for ``messages`` with transformers' own chat-template machinery (sandboxed Jinja).

    ``today`` (a ``datetime``) is what the template's ``strftime_now`` sees instead of the current time.
    """
    from transformers.utils import chat_template_utils as ctu

    real = ctu.datetime
    if today is not None:
        ctu.datetime = type("_Clock", (), {"now": staticmethod(lambda *a, **k: today)})
    try:
        rendered, _ = ctu.render_jinja_template(conversations=[messages], chat_template=template,
                                                add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token)
    finally:
        ctu.datetime = real
    return rendered[0]
