"""The Ollama Modelfile text: FROM, TEMPLATE, SYSTEM, PARAMETER lines, LICENSE (quoted as Ollama's parser reads)."""

from __future__ import annotations

from ..errors import ForgeError

#: Ollama PARAMETER names and their types (REFERENCE section 7); others are refused or ignored by `ollama create`
PARAMETER_TYPES = {"num_ctx": int, "temperature": float, "top_p": float, "top_k": int, "min_p": float,
                   "repeat_penalty": float, "seed": int, "num_predict": int}


def _printable(text: str) -> bool:
    return all(ch.isprintable() or ch in "\n\t\r" for ch in text)


def quote(text: str, what: str) -> str:
    """Quote a Modelfile value so that Ollama's parser reads back exactly ``text``."""
    if '"""' in text:
        raise ForgeError(f"{what} contains three double quotes in a row, which a Modelfile cannot hold; remove them")
    if not _printable(text):
        bad = next(ch for ch in text if not (ch.isprintable() or ch in "\n\t\r"))
        raise ForgeError(f"{what} contains the invisible character U+{ord(bad):04X}, which Ollama's Modelfile "
                         "parser drops; remove it")
    if '"' in text or "\n" in text:
        return '"""' + text + '"""'
    return '"' + text + '"'


def format_number(value: float | int) -> str:
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def modelfile_text(*, name: str, from_path: str, template: str, system: str | None, stops: list[str],
                   parameters: dict[str, float | int], license: str | None, notes: list[str]) -> str:
    """The Modelfile, stop strings each on their own ``PARAMETER stop`` line."""
    lines = [f"# Ollama Modelfile for {name}, written by gguf-forge (quantize modelfile).",
             f"# Create the model: ollama create {name} -f Modelfile"]
    lines += [f"# note: {n}" for n in notes]
    lines += ["", f"FROM {from_path}", "", f"TEMPLATE {quote(template, 'the template')}"]
    if system is not None:
        lines += ["", f"SYSTEM {quote(system, 'the system prompt')}"]
    lines.append("")
    lines += [f"PARAMETER stop {quote(s, f'the stop string {s!r}')}" for s in stops]
    for key, value in parameters.items():
        lines.append(f"PARAMETER {key} {format_number(PARAMETER_TYPES[key](value))}")
    if license:
        lines += ["", f"LICENSE {quote(license, 'the LICENSE text')}"]
    return "\n".join(lines) + "\n"
