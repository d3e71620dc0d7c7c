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
from typing import Callable, ClassVar

import gguf
import numpy as np

from ...errors import ForgeError

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
    theta = float(config.get("rope_theta", 10000.0))
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
        self.config = config
        c = config
        try:
            self.n_embd = int(c["hidden_size"])
            self.n_layer = int(c["num_hidden_layers"])
            self.n_head = int(c["num_attention_heads"])
            self.n_ff = int(c["intermediate_size"])
            self.n_vocab = int(c["vocab_size"])
        except KeyError as e:
            raise ForgeError(f"config.json: missing {e.args[0]!r}") from None
        self.n_head_kv = int(c.get("num_key_value_heads") or self.n_head)
        self.head_dim = int(c.get("head_dim") or self.n_embd // self.n_head)
        self.n_ctx = int(c.get("max_position_embeddings", 4096))
        self.rope_theta, self.rope_scaling = rope_settings(c)
        self.tied = bool(c.get("tie_word_embeddings", False))
        self.name_map = gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)

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
        w.add_layer_norm_rms_eps(float(self.config.get("rms_norm_eps", 1e-6)))
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
            w.add_rope_scaling_orig_ctx_len(int(s.get("original_max_position_embeddings", self.n_ctx)))
        elif kind == "llama3":
            pass  # stored as the rope_freqs tensor, see extra_tensors
        else:
            raise ForgeError(f"config.json: rope scaling type {kind!r} is not supported for {self.arch_name}")

    def llama3_rope_freqs(self) -> np.ndarray:
        """Per-dimension frequency divisors for ``rope_type == "llama3"`` (the ``rope_freqs`` tensor)."""
        s = self.rope_scaling or {}
        factor = float(s.get("factor", 8.0))
        low = float(s.get("low_freq_factor", 1.0))
        high = float(s.get("high_freq_factor", 4.0))
        old_ctx = float(s.get("original_max_position_embeddings", 8192))
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
