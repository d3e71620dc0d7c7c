"""One class per model architecture, registered by its Hugging Face architecture name.

Adding an architecture means adding one module here that defines a :class:`Architecture`
subclass decorated with :func:`register` (its Hugging Face architecture names); nothing else is
edited: every module of this package is imported when the package is. The converter asks
:func:`for_config` for the class that handles a ``config.json``.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
from typing import Callable, ClassVar

import gguf
import numpy as np

from ...errors import ForgeError
from ..config import check_config

_REGISTRY: dict[str, type["Architecture"]] = {}


def register(*hf_names: str) -> Callable[[type["Architecture"]], type["Architecture"]]:
    """Class decorator: handle configs whose ``architectures[0]`` is one of ``hf_names``."""

    def deco(cls: type[Architecture]) -> type[Architecture]:
        for n in hf_names:
            if _REGISTRY.get(n, cls) is not cls:
                raise TypeError(f"{n} is registered twice: {_REGISTRY[n].__qualname__} and {cls.__qualname__}")
            _REGISTRY[n] = cls
        cls.hf_architectures = tuple(hf_names)
        return cls

    return deco


def supported() -> list[str]:
    """Hugging Face architecture names this converter handles."""
    return sorted(_REGISTRY)


def for_config(config: dict) -> "Architecture":
    check_config(config)
    names = config.get("architectures") or []
    for n in names:
        if n in _REGISTRY:
            return _REGISTRY[n](config)
    shown = ", ".join(names) if names else f"model_type {config.get('model_type')!r}"
    raise ForgeError(
        f"config.json: architecture {shown} is not supported; supported: {', '.join(supported())}"
    )


def rope_settings(config: dict) -> tuple[float, dict | None]:
    """(rope theta, rope scaling dict or None) from old- or new-style (transformers 5) configs.

    With per-layer-type parameters (``{"full_attention": {...}, "sliding_attention": {...}}``) this is
    the full-attention (global) setting.
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    if isinstance(params, dict) and "rope_theta" in params:
        theta = float(params["rope_theta"])
        scaling = None if params.get("rope_type", "default") == "default" else dict(params)
        return theta, scaling
    theta = float(config.get("rope_theta") or 10000.0)
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict):
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type"))
        if scaling["rope_type"] in (None, "default"):
            scaling = None
    else:
        scaling = None
    return theta, scaling


class Architecture:
    """How one Hugging Face architecture maps to a GGUF architecture.

    Subclasses set :attr:`gguf_arch` and may override :meth:`transform`,
    :meth:`add_hparams` and :meth:`extra_tensors`.
    """

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    #: per-block tensors every checkpoint must provide (GGUF names without "blk.N.")
    required_block_tensors: ClassVar[tuple[str, ...]] = (
        "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
    )
    #: Hugging Face tensors that carry no weights llama.cpp needs
    ignored_tensor_suffixes: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)

    def __init__(self, config: dict):
        check_config(config)  # done by Checkpoint already, with the file's path; a config from elsewhere too
        self.config = config
        c = config
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if c.get(key) is None:
                raise ForgeError(f"config.json: missing {key!r}")
        self.n_embd: int = c["hidden_size"]
        self.n_layer: int = c["num_hidden_layers"]
        self.n_head: int = c["num_attention_heads"]
        self.n_ff: int = c["intermediate_size"]
        self.n_vocab: int = c["vocab_size"]
        self.n_head_kv: int = c.get("num_key_value_heads") or self.n_head
        self.head_dim: int = c.get("head_dim") or self._default_head_dim()
        self._check_heads()
        self.n_ctx: int = c.get("max_position_embeddings") or 4096
        self.rope_theta, self.rope_scaling = rope_settings(c)
        self._check_rope_type()
        self.tied = bool(c.get("tie_word_embeddings", False))
        self.name_map = gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)

    def _default_head_dim(self) -> int:
        if self.n_embd % self.n_head:
            raise ForgeError(f"config.json: hidden_size {self.n_embd} is not a multiple of num_attention_heads "
                             f"{self.n_head}, and no head_dim is given")
        return self.n_embd // self.n_head

    def _check_heads(self) -> None:
        if self.n_head % self.n_head_kv:
            raise ForgeError(f"config.json: num_attention_heads {self.n_head} is not a multiple of "
                             f"num_key_value_heads {self.n_head_kv}")
        if self.head_dim % 2:
            raise ForgeError(f"config.json: head_dim {self.head_dim} must be even (rope turns pairs of dimensions)")

    def _check_rope_type(self) -> None:
        kind = (self.rope_scaling or {}).get("rope_type")
        if kind is not None and kind not in ("linear", "yarn", "llama3"):
            raise ForgeError(f"config.json: rope scaling type {kind!r} is not supported for {self.arch_name}")

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    # -- tensors -------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name for a Hugging Face tensor, or None for tensors to skip."""
        if hf_name.endswith(self.ignored_tensor_suffixes):
            return None
        if self.tied and hf_name == "lm_head.weight":
            return None
        name = self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ForgeError(
                f"tensor {hf_name}: no {self.arch_name} GGUF equivalent; the checkpoint does not match its "
                f"config.json architecture {self.config.get('architectures')}"
            )
        return name

    def rearranges(self, gguf_name: str) -> bool:
        """True when :meth:`transform` changes this tensor (it is then read whole, not in slabs)."""
        return False

    def transform(self, gguf_name: str, data: np.ndarray, dtype: str) -> np.ndarray:
        """Rearrange a tensor for llama.cpp. ``data`` is raw (``dtype`` is its safetensors name,
        BF16 as uint16 bits); return it rearranged in the same raw type, or as float32 when values change.
        Default: unchanged."""
        return data

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors llama.cpp needs that the checkpoint does not store (float32)."""
        return {}

    def expected_shape(self, gguf_name: str) -> tuple[tuple[int, ...], str] | None:
        """The Hugging Face (rows first) shape ``config.json`` implies for a tensor, and how; None: not checked."""
        q, kv, e, f = self.n_head * self.head_dim, self.n_head_kv * self.head_dim, self.n_embd, self.n_ff
        heads = "num_attention_heads x head_dim"
        kv_heads = "num_key_value_heads x head_dim"
        norm = ((e,), "hidden_size")
        table: dict[str, tuple[tuple[int, ...], str]] = {
            "token_embd.weight": ((self.n_vocab, e), "vocab_size, hidden_size"),
            "output.weight": ((self.n_vocab, e), "vocab_size, hidden_size"),
            "output_norm.weight": norm, "attn_norm.weight": norm, "ffn_norm.weight": norm,
            "post_attention_norm.weight": norm, "post_ffw_norm.weight": norm,
            "attn_q.weight": ((q, e), f"{heads}, hidden_size"), "attn_q.bias": ((q,), heads),
            "attn_k.weight": ((kv, e), f"{kv_heads}, hidden_size"), "attn_k.bias": ((kv,), kv_heads),
            "attn_v.weight": ((kv, e), f"{kv_heads}, hidden_size"), "attn_v.bias": ((kv,), kv_heads),
            "attn_output.weight": ((e, q), f"hidden_size, {heads}"),
            "ffn_gate.weight": ((f, e), "intermediate_size, hidden_size"),
            "ffn_up.weight": ((f, e), "intermediate_size, hidden_size"),
            "ffn_down.weight": ((e, f), "hidden_size, intermediate_size"),
            "attn_q_norm.weight": ((self.head_dim,), "head_dim"), "attn_k_norm.weight": ((self.head_dim,), "head_dim"),
        }
        return table.get(re.sub(r"^blk\.\d+\.", "", gguf_name))

    def check_shape(self, hf_name: str, gguf_name: str, shape: tuple[int, ...]) -> None:
        """Raise unless ``shape`` is what ``config.json`` implies (before anything is written)."""
        want = self.expected_shape(gguf_name)
        if want is not None and tuple(shape) != want[0]:
            raise ForgeError(f"tensor {hf_name}: shape {list(shape)}, but config.json implies {list(want[0])} "
                             f"({want[1]}); the weights do not match the config")

    def check_complete(self, names: set[str]) -> None:
        """Raise if a tensor llama.cpp requires is absent."""
        need = ["token_embd.weight", "output_norm.weight"]
        if not self.tied:
            need.append("output.weight")
        for b in range(self.n_layer):
            need += [f"blk.{b}.{t}" for t in self.required_block_tensors]
        missing = [n for n in need if n not in names]
        if missing:
            raise ForgeError(
                f"the checkpoint lacks tensor {missing[0]} (GGUF name) and {len(missing) - 1} more that "
                f"{self.arch_name} needs; is the download complete?"
            )

    # -- metadata ------------------------------------------------------------------------
    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        """The ``{arch}.*`` keys. Default: the llama family's."""
        self.add_common_hparams(w)
        w.add_rope_dimension_count(self.head_dim)
        if self.head_dim != self.n_embd // self.n_head:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        self.add_rope_scaling(w)

    def add_common_hparams(self, w: gguf.GGUFWriter) -> None:
        """Shapes, context, rope base, norm epsilon and vocabulary size: what every architecture stores."""
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_rope_freq_base(self.rope_theta)
        eps = self.config.get("rms_norm_eps")
        w.add_layer_norm_rms_eps(float(1e-6 if eps is None else eps))
        w.add_vocab_size(self.n_vocab)

    def add_rope_scaling(self, w: gguf.GGUFWriter) -> None:
        s = self.rope_scaling
        if not s:
            return
        kind = s.get("rope_type")
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(s["factor"]))
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(s["factor"]))
            w.add_rope_scaling_orig_ctx_len(int(s.get("original_max_position_embeddings") or self.n_ctx))
        elif kind == "llama3":
            pass  # stored as the rope_freqs tensor, see extra_tensors
        else:
            raise ForgeError(f"config.json: rope scaling type {kind!r} is not supported for {self.arch_name}")

    def llama3_rope_freqs(self) -> np.ndarray:
        """Per-dimension frequency divisors for ``rope_type == "llama3"`` (the ``rope_freqs`` tensor)."""
        s = self.rope_scaling or {}
        factor = float(s.get("factor") or 8.0)
        low = float(s.get("low_freq_factor") or 1.0)
        high = float(s.get("high_freq_factor") or 4.0)
        old_ctx = float(s.get("original_max_position_embeddings") or 8192)
        low_wavelen = old_ctx / low
        high_wavelen = old_ctx / high
        out = []
        for i in range(0, self.head_dim, 2):
            freq = 1.0 / (self.rope_theta ** (i / self.head_dim))
            wavelen = 2 * math.pi / freq
            if wavelen < high_wavelen:
                out.append(1.0)
            elif wavelen > low_wavelen:
                out.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                out.append(1.0 / ((1 - smooth) / factor + smooth))
        return np.asarray(out, dtype=np.float32)


def permute_rope_rows(data: np.ndarray, n_head: int) -> np.ndarray:
    """Rotate-half (Hugging Face) -> interleaved (GGML) row order for Q/K weights or biases."""
    rows = data.shape[0]
    rest = data.shape[1:]
    return (
        data.reshape(n_head, 2, rows // n_head // 2, *rest)
        .swapaxes(1, 2)
        .reshape(data.shape)
    )


def _import_architectures() -> None:
    """Import every module of this package; each registers its classes with :func:`register`."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_architectures()
