"""``--override-kv KEY=TYPE:VALUE`` metadata overrides, with llama.cpp's type names."""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from ..errors import ForgeError

_TYPES = {"int": gguf.GGUFValueType.INT32, "float": gguf.GGUFValueType.FLOAT32,
          "bool": gguf.GGUFValueType.BOOL, "str": gguf.GGUFValueType.STRING}


@dataclass(frozen=True)
class KVOverride:
    """One metadata key to set: ``kind`` is ``int``, ``float``, ``bool`` or ``str``."""

    key: str
    kind: str
    value: int | float | bool | str


def parse_override(text: str) -> KVOverride:
    """Parse ``key=type:value`` (e.g. ``llama.context_length=int:32768``); errors name the text, not an option."""
    key, sep, rest = text.partition("=")
    kind, sep2, value = rest.partition(":")
    if not sep or not sep2 or not key or kind not in _TYPES:
        raise ForgeError(f"{text!r}: expected KEY=TYPE:VALUE with TYPE one of int, float, bool, str")
    try:
        if kind == "int":
            return KVOverride(key, kind, int(value, 0))
        if kind == "float":
            return KVOverride(key, kind, float(value))
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return KVOverride(key, kind, value.lower() in ("true", "1"))
    except ValueError:
        raise ForgeError(f"{text!r}: {value!r} is not a valid {kind}") from None
    return KVOverride(key, kind, value)


def apply_overrides(w: gguf.GGUFWriter, overrides: list[KVOverride]) -> None:
    """Set each override on the writer; an existing key keeps its stored type (llama.cpp checks it)."""
    kv = w.kv_data[0]
    for o in overrides:
        if o.key in kv:
            old = kv[o.key]
            vtype = old.type
            if vtype == gguf.GGUFValueType.ARRAY:
                raise ForgeError(f"--override-kv {o.key}: array keys cannot be overridden")
            value = o.value
            numeric = vtype not in (gguf.GGUFValueType.STRING, gguf.GGUFValueType.BOOL)
            if numeric and o.kind not in ("int", "float"):
                raise ForgeError(f"--override-kv {o.key}: the key holds a number, got {o.kind}")
            if vtype in (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64):
                value = float(value)
            elif numeric:
                if isinstance(value, float) and not value.is_integer():
                    raise ForgeError(f"--override-kv {o.key}: the key holds an integer, got {value}")
                value = int(value)
            elif (vtype == gguf.GGUFValueType.STRING) != (o.kind == "str"):
                raise ForgeError(f"--override-kv {o.key}: the key holds a {vtype.name.lower()}, got {o.kind}")
            kv[o.key] = gguf.GGUFValue(value=value, type=vtype)
        else:
            kv[o.key] = gguf.GGUFValue(value=o.value, type=_TYPES[o.kind])
