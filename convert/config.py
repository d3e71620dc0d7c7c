"""``config.json`` checked against what the converter reads from it, before anything is written.

:func:`check_config` validates, where present, the type and range of every key the converter, the LoRA merge and
the ``gguf`` package's metadata and special-token readers use: sizes are positive integers that fit GGUF's 32-bit
fields (the layer count at most llama.cpp's limit), floats are finite and fit a float32, flags are booleans,
token ids are non-negative, and rope scaling carries what its type needs. A bad value is one line naming the file,
the key and the value. Which keys an architecture requires and how its sizes must divide is checked by the
architecture (:class:`~.arch.Architecture`), which also knows its defaults.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ForgeError

U32_MAX = 2**32 - 1
#: llama.cpp's LLAMA_MAX_LAYERS
MAX_LAYERS = 512
F32_MAX = float(np.finfo(np.float32).max)

#: sizes: positive integers stored as uint32 (None: absent or null is fine here; the architecture says if required)
SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
         "num_key_value_heads", "head_dim", "max_position_embeddings")
#: floats stored as float32, with their lower bound (and whether the bound itself is allowed)
FLOATS = {"rms_norm_eps": (0.0, True), "rope_theta": (0.0, False), "rope_local_base_freq": (0.0, False),
          "query_pre_attn_scalar": (0.0, False), "final_logit_softcapping": (0.0, True),
          "attn_logit_softcapping": (0.0, True)}
STRINGS = ("model_type", "_name_or_path", "hidden_act", "hidden_activation")
BOOLS = ("tie_word_embeddings",)
TOKEN_IDS = tuple(f"{t}_token_id" for t in ("bos", "eos", "unk", "sep", "pad", "cls", "mask", "eot", "eom"))
#: what each rope scaling type needs besides ``rope_type``
ROPE_NEEDS = {"linear": ("factor",), "yarn": ("factor",)}


def shown(value: Any) -> str:
    """A value as JSON, cut short: how messages quote what the file says."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception from a third-party parser as a short single line: ``Type: message``."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_int(value: Any) -> bool:
    """An integer, and not a boolean (JSON ``true`` is not a size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(config: dict, source: str | Path = "config.json") -> None:
    """Raise a ForgeError naming ``source`` and the key for the first value the converter could not use."""

    def fail(key: str, what: str, value: Any) -> None:
        raise ForgeError(f"{source}: {key} must be {what}, got {shown(value)}")

    for key in SIZES:
        value = config.get(key)
        if value is None:
            continue
        if not is_int(value) or value <= 0:
            fail(key, "a positive integer", value)
        if value > U32_MAX:
            fail(key, f"at most {U32_MAX} (GGUF stores it in 32 bits)", value)
    layers = config.get("num_hidden_layers")
    if layers is not None and layers > MAX_LAYERS:
        fail("num_hidden_layers", f"at most {MAX_LAYERS} (llama.cpp's limit)", layers)
    for key, (low, inclusive) in FLOATS.items():
        value = config.get(key)
        if value is not None:
            check_float(value, low, inclusive, lambda what, k=key: fail(k, what, value))
    for key in STRINGS:
        if config.get(key) is not None and not isinstance(config[key], str):
            fail(key, "a string", config[key])
    for key in BOOLS:
        if config.get(key) is not None and not isinstance(config[key], bool):
            fail(key, "true or false", config[key])
    _check_lists(config, fail)
    for key in ("rope_scaling", "rope_parameters"):
        if config.get(key) is not None:
            _check_rope(config[key], key, fail)


def check_float(value: Any, low: float, inclusive: bool, fail) -> None:
    """``fail(what)`` unless ``value`` is a finite number above ``low`` (or equal, with ``inclusive``) that a
    float32 can hold."""
    bound = f"at least {low:g}" if inclusive else f"greater than {low:g}"
    if not is_number(value) or not math.isfinite(value):
        fail(f"a finite number ({bound})")
    if value < low or (value == low and not inclusive):
        fail(f"a number {bound}")
    if abs(value) > F32_MAX:
        fail(f"at most {F32_MAX:.4g} (GGUF stores it as a float32)")


def _check_lists(config: dict, fail) -> None:
    """Architecture names, layer types, token ids, the sliding window and the nested text config."""
    names = config.get("architectures")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        fail("architectures", "a list of architecture names", names)
    types = config.get("layer_types")
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        fail("layer_types", "a list of layer type names", types)
    window = config.get("sliding_window")
    if window is not None and not (is_int(window) and 0 <= window <= U32_MAX):
        fail("sliding_window", "a non-negative integer that fits 32 bits", window)
    for key in TOKEN_IDS:
        value = config.get(key)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(is_int(i) and 0 <= i <= U32_MAX for i in ids):
            fail(key, "a token id (a non-negative integer) or a list of them", value)
    if config.get("text_config") is not None and not isinstance(config["text_config"], dict):
        fail("text_config", "an object", config["text_config"])


def _check_rope(value: Any, key: str, fail) -> None:
    """``rope_scaling`` / ``rope_parameters``: one setting, or one per layer type (transformers 5)."""
    if not isinstance(value, dict):
        fail(key, "an object", value)
    per_type = [k for k in ("full_attention", "sliding_attention") if k in value]
    if per_type:
        for k in per_type:
            if not isinstance(value[k], dict):
                fail(f"{key}.{k}", "an object", value[k])
            _check_rope_setting(value[k], f"{key}.{k}", fail)
    else:
        _check_rope_setting(value, key, fail)


def _check_rope_setting(s: dict, key: str, fail) -> None:
    kind = s.get("rope_type", s.get("type"))
    if kind is not None and not isinstance(kind, str):
        fail(f"{key}.rope_type", "a string", kind)
    for name in ("rope_theta", "factor", "low_freq_factor", "high_freq_factor"):
        value = s.get(name)
        if value is not None:
            check_float(value, 0.0, False, lambda what, n=name: fail(f"{key}.{n}", what, value))
    for name in ROPE_NEEDS.get(kind or "", ()):
        if s.get(name) is None:
            fail(f"{key}.{name}", f"given for rope type {kind}", None)
    orig = s.get("original_max_position_embeddings")
    if orig is not None and not (is_int(orig) and 0 < orig <= U32_MAX):
        fail(f"{key}.original_max_position_embeddings", "a positive integer that fits 32 bits", orig)
    low, high = s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    if kind == "llama3" and high <= low:
        fail(f"{key}.high_freq_factor", f"greater than low_freq_factor ({low:g}) for llama3 rope scaling", high)
