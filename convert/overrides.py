"""``--override-kv KEY=TYPE:VALUE`` metadata overrides, with llama.cpp's type names."""

from __future__ import annotations

import math
from dataclasses import dataclass

import gguf

from ..errors import ForgeError
from .config import F32_MAX

_TYPES = {"int": gguf.GGUFValueType.INT32, "float": gguf.GGUFValueType.FLOAT32,
          "bool": gguf.GGUFValueType.BOOL, "str": gguf.GGUFValueType.STRING}
_V = gguf.GGUFValueType
#: GGUF integer types: (bits, signed)
_INT_BITS = {_V.UINT8: (8, False), _V.INT8: (8, True), _V.UINT16: (16, False), _V.INT16: (16, True),
             _V.UINT32: (32, False), _V.INT32: (32, True), _V.UINT64: (64, False), _V.INT64: (64, True)}


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
            number = float(value)
            if not math.isfinite(number):
                raise ForgeError(f"{text!r}: {value!r} is not a finite number")
            return KVOverride(key, kind, number)
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
            _check_range(o.key, value, vtype)
            kv[o.key] = gguf.GGUFValue(value=value, type=vtype)
        else:
            _check_range(o.key, o.value, _TYPES[o.kind])
            kv[o.key] = gguf.GGUFValue(value=o.value, type=_TYPES[o.kind])


def _check_range(key: str, value: object, vtype: gguf.GGUFValueType) -> None:
    """An integer fits the key's GGUF integer type; a float32 key's value fits a float32."""
    if vtype in _INT_BITS and not isinstance(value, bool):
        bits, signed = _INT_BITS[vtype]
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        if not low <= int(value) <= high:  # type: ignore[call-overload]
            raise ForgeError(f"--override-kv {key}: {value} does not fit the key's type {vtype.name.lower()} "
                             f"({low} to {high})")
    if vtype == gguf.GGUFValueType.FLOAT32 and abs(float(value)) > F32_MAX:  # type: ignore[arg-type]
        raise ForgeError(f"--override-kv {key}: {value} does not fit the key's type float32")
