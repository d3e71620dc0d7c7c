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
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Mapping

import gguf
import numpy as np

from ...errors import ForgeError
from ..checkpoint import TensorRef
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


@dataclass(frozen=True)
class Piece:
    """One source of an :class:`Assembly`: the Hugging Face tensor ``hf_name``, read in slabs along its first axis.

    ``pick`` (optional) turns each slab (the raw data of a range of the source's first axis, BF16 as uint16 bits)
    into the part of the output it supplies, keeping the leading axis: e.g. ``lambda s: s[:, :n_ff]`` takes the gate
    half of fused ``[n_expert, 2 x n_ff, n_embd]`` experts, ``lambda s: s.transpose(0, 2, 1)`` turns ``[n_expert, in,
    out]`` experts into llama.cpp's ``[n_expert, out, in]``. It must not change values (only select or move them).
    """

    hf_name: str
    pick: Callable[..., np.ndarray] | None = None
    #: further sources read in lockstep (same slabs of the same first axis) and passed to ``pick`` after the
    #: first, e.g. the ``_scales`` beside MXFP4 ``_blocks``
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Assembly:
    """A GGUF tensor written from several Hugging Face tensors, or from parts of them, streaming.

    The output is the row-major concatenation of every piece's (picked) slabs, in order, of shape ``shape`` (rows
    first, as Hugging Face shapes are; the GGUF file stores it reversed, as every tensor). The converter reads one
    slab of one piece at a time (a slab is at most the converter's slab size, and at least one step of the
    source's first axis: one expert of a 3-D expert tensor, a few rows of a 2-D one), so peak memory is bounded by
    one expert (or one slab), never the layer or the model. Assemblies of one block whose pieces are whole tensors
    (no ``pick``, no ``also``) are read together, every source once in storage order, each slab written at its
    place (a layer's gate, up and down experts stored expert by expert). llama.cpp's 3-D expert tensors
    (``blk.N.ffn_{gate,up,down}_exps.weight``, shape ``[n_expert, rows, cols]``) are the main use: see
    :meth:`Architecture.expert_assemblies`, which builds them from per-expert 2-D tensors or fused 3-D ones.

    ``qtype`` set: the pieces already hold GGML data of that type (e.g. MXFP4 blocks repacked by ``pick``), written
    as they are (or through ``dequant`` when a float output type was asked for); ``shape`` is in elements.
    Otherwise every slab is checked for NaN/infinity and encoded to the output type like any other tensor (pieces
    may differ in stored dtype, e.g. experts a LoRA merge touched are float32, the others bf16).
    """

    gguf_name: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]
    qtype: gguf.GGMLQuantizationType | None = None
    #: with ``qtype``: the exact float32 values of a slab of that data (rows x bytes -> rows x elements), used when
    #: the user asks for a float output type (``--outtype f32/f16/bf16``); None: always written as ``qtype``
    dequant: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def hf_names(self) -> list[str]:
        return [n for p in self.pieces for n in (p.hf_name, *p.also)]

    def chunks(self, ckpt, slab_bytes: int) -> Iterator[tuple[np.ndarray, str, str, int]]:
        """(2-D slab of output rows, its safetensors dtype, the source tensor's name, the slab's first row in that
        source); the slab's last axis is the output's last axis (for a raw ``qtype``: its bytes per row)."""
        for piece in self.pieces:
            ref = ckpt.tensors[piece.hf_name]
            dtype = ref.dtype
            step = max(1, slab_bytes // max(1, ref.nbytes // max(1, ref.shape[0]))) if ref.nbytes else ref.shape[0]
            others = []
            for name in piece.also:
                o = ckpt.tensors[name]
                if o.shape[:1] != ref.shape[:1]:
                    raise ForgeError(f"tensor {name}: first axis {o.shape[0]}, but {piece.hf_name} has {ref.shape[0]}")
                others.append(ckpt.iter_rows(name, step * max(1, o.nbytes // max(1, o.shape[0]))))
            row = 0
            for slab in ckpt.iter_rows(piece.hf_name, slab_bytes):
                n = slab.shape[0]
                out_dtype = dtype
                if piece.pick is not None:
                    slab = np.ascontiguousarray(piece.pick(slab, *(next(it) for it in others)))
                    if slab.dtype == np.float32 and dtype not in ("F32", "F16", "BF16"):
                        out_dtype = "F32"  # e.g. quantized data dequantized by the pick
                yield slab.reshape(-1, slab.shape[-1]), out_dtype, piece.hf_name, row
                row += n


class Architecture:
    """How one Hugging Face architecture maps to a GGUF architecture.

    Subclasses set :attr:`gguf_arch` and may override :meth:`transform`,
    :meth:`add_hparams`, :meth:`extra_tensors` and :meth:`assemblies` (GGUF tensors built from several Hugging
    Face tensors, e.g. llama.cpp's 3-D expert tensors; MoE architectures set :attr:`fused_experts` and call
    :meth:`expert_assemblies`).
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
    #: GGUF names (suffixes) written as float32 whatever the output type (e.g. ggml's ssm_conv kernel, routers)
    f32_tensors: ClassVar[tuple[str, ...]] = ()
    #: how fused 3-D expert tensors (``<experts>.gate_up_proj`` / ``<experts>.down_proj``) are laid out, see
    #: :meth:`expert_assemblies`: "out_in" (transformers 5 Qwen-MoE: ``gate_up_proj`` ``[n_expert, 2 x n_ff,
    #: n_embd]``, gate rows first, then up; ``down_proj`` ``[n_expert, n_embd, n_ff]``) or "in_out_interleaved"
    #: (gpt-oss: ``gate_up_proj`` ``[n_expert, n_embd, 2 x n_ff]`` with gate and up in alternate columns,
    #: ``down_proj`` ``[n_expert, n_ff, n_embd]``)
    fused_experts: ClassVar[str] = "out_in"

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

    def gguf_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape (rows first) the GGUF stores for a tensor of Hugging Face shape ``shape``; :meth:`transform`
        returns data of this shape (same elements, e.g. a ``[channels, 1, kernel]`` conv squeezed). Default: same."""
        return tuple(shape)

    def transform(self, gguf_name: str, data: np.ndarray, dtype: str) -> np.ndarray:
        """Rearrange a tensor for llama.cpp. ``data`` is raw (``dtype`` is its safetensors name,
        BF16 as uint16 bits); return it rearranged in the same raw type, or as float32 when values change.
        Default: unchanged."""
        return data

    def imatrix_columns(self, gguf_name: str, values: np.ndarray) -> np.ndarray:
        """Per-input-column statistics of a Hugging Face weight (e.g. imatrix sums, last axis) in the column order
        :meth:`transform` gives the GGUF tensor. Default: unchanged (transforms that permute columns override)."""
        return values

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors llama.cpp needs that the checkpoint does not store (float32)."""
        return {}

    def assemblies(self, tensors: Mapping[str, TensorRef]) -> list[Assembly]:
        """GGUF tensors built from several Hugging Face tensors (or parts of them), given every tensor of the
        checkpoint (name -> :class:`~..checkpoint.TensorRef`: dtype and shape; nothing is read here).

        The Hugging Face tensors an assembly names are not mapped one by one (:meth:`gguf_name` is not asked about
        them); each assembly is written where its first piece is in storage order. Raise :class:`ForgeError` (one
        line naming the tensor) for missing or mis-shaped pieces: this runs before anything is written. An
        assembled tensor counts for :meth:`check_complete` under its GGUF name; :meth:`expected_shape` is checked
        against ``Assembly.shape``. Default: none. MoE architectures return :meth:`expert_assemblies` per layer.
        """
        return []

    def expert_assemblies(self, tensors: Mapping[str, TensorRef], bid: int, prefix: str, n_expert: int,
                          n_ff_exp: int, bias: bool = False) -> list[Assembly]:
        """llama.cpp's ``blk.{bid}.ffn_{gate,up,down}_exps.weight`` (``[n_expert, n_ff_exp, n_embd]`` and
        ``[n_expert, n_embd, n_ff_exp]``) from the experts under ``prefix`` (e.g. ``model.layers.3.mlp.experts``),
        whichever way the checkpoint stores them:

        - per expert, 2-D (transformers 4 and transformers 5's ``save_pretrained`` for Qwen-MoE, hub checkpoints):
          ``{prefix}.{e}.gate_proj.weight`` ``[n_ff_exp, n_embd]``, ``up_proj``, ``down_proj`` ``[n_embd, n_ff_exp]``:
          one piece per expert, read whole (one expert at a time);
        - fused, 3-D (transformers 5 in memory; gpt-oss on disk): ``{prefix}.gate_up_proj`` and
          ``{prefix}.down_proj``, laid out as :attr:`fused_experts` says; gate and up are each read from the fused
          tensor in slabs of whole experts (so it is read twice: the GGUF file needs gate before up).

        ``bias``: also ``ffn_{gate,up,down}_exps.bias`` from ``{prefix}.gate_up_proj_bias`` / ``down_proj_bias``
        (gpt-oss; ``[n_expert, 2 x n_ff_exp]`` split like the weight's output axis). Returns [] when the layer has
        no experts in either form (a dense layer); raises on a partial or mixed set, naming the first missing tensor.
        """
        e, f, h = n_expert, n_ff_exp, self.n_embd
        per = [f"{prefix}.{x}.{w}.weight" for x in range(e) for w in ("gate_proj", "up_proj", "down_proj")]
        fused = [f"{prefix}.gate_up_proj", f"{prefix}.down_proj"]
        expert_re = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
        indexed = sorted((int(m.group(1)), n) for n in tensors if (m := expert_re.match(n)))
        has_per = bool(indexed)
        has_fused = any(n in tensors for n in fused)
        if not has_per and not has_fused:
            return []
        if has_per and has_fused:
            raise ForgeError(f"tensor {fused[0] if fused[0] in tensors else fused[1]}: the checkpoint holds layer "
                             f"{bid}'s experts both fused and per expert ({per[0]}); keep one copy")
        want = per if has_per else fused
        missing = [n for n in want if n not in tensors]
        if missing:
            raise ForgeError(f"the checkpoint lacks tensor {missing[0]} and {len(missing) - 1} more that "
                             f"{self.arch_name} needs for layer {bid}'s {e} experts; is the download complete?")
        beyond = [n for x, n in indexed if x >= e]
        if beyond:
            raise ForgeError(f"tensor {beyond[0]}: expert index beyond the {e} experts config.json declares")
        out = f"blk.{bid}.ffn_%s_exps.weight"
        gate_shape, down_shape = (e, f, h), (e, h, f)
        if has_per:
            def check(name: str, shape: tuple[int, ...], how: str) -> None:
                got = tuple(tensors[name].shape)
                if got != shape:
                    raise ForgeError(f"tensor {name}: shape {list(got)}, but config.json implies {list(shape)} "
                                     f"({how}); the weights do not match the config")
            ff = "moe_intermediate_size" if "moe_intermediate_size" in self.config else "intermediate_size"
            for x in range(e):
                check(f"{prefix}.{x}.gate_proj.weight", (f, h), f"{ff}, hidden_size")
                check(f"{prefix}.{x}.up_proj.weight", (f, h), f"{ff}, hidden_size")
                check(f"{prefix}.{x}.down_proj.weight", (h, f), f"hidden_size, {ff}")
            result = [Assembly(out % w, shp, tuple(Piece(f"{prefix}.{x}.{w}_proj.weight") for x in range(e)))
                      for w, shp in (("gate", gate_shape), ("up", gate_shape), ("down", down_shape))]
        else:
            result = self._fused_expert_assemblies(tensors, prefix, out, e, f, h)
        if bias:
            result += self._expert_bias_assemblies(tensors, bid, prefix, e, f, h)
        return result

    def _fused_expert_assemblies(self, tensors: Mapping[str, TensorRef], prefix: str, out: str, e: int, f: int,
                                 h: int) -> list[Assembly]:
        gate_up, down = f"{prefix}.gate_up_proj", f"{prefix}.down_proj"
        layout = self.fused_experts
        if layout == "out_in":
            want_gu, want_d = (e, 2 * f, h), (e, h, f)
            gate, up = (lambda s: s[:, :f]), (lambda s: s[:, f:])
            down_pick = None
        elif layout == "in_out_interleaved":
            want_gu, want_d = (e, h, 2 * f), (e, f, h)
            gate, up = (lambda s: s[:, :, 0::2].transpose(0, 2, 1)), (lambda s: s[:, :, 1::2].transpose(0, 2, 1))
            down_pick = _swap_last
        else:  # a programming error in an architecture module
            raise TypeError(f"unknown fused_experts layout {layout!r}")
        for name, shape in ((gate_up, want_gu), (down, want_d)):
            got = tuple(tensors[name].shape)
            if got != shape:
                raise ForgeError(f"tensor {name}: shape {list(got)}, but config.json implies {list(shape)} "
                                 f"(experts x {'2 x ' if name == gate_up else ''}expert width x hidden_size, "
                                 f"layout {layout}); the weights do not match the config")
        return [Assembly(out % "gate", (e, f, h), (Piece(gate_up, gate),)),
                Assembly(out % "up", (e, f, h), (Piece(gate_up, up),)),
                Assembly(out % "down", (e, h, f), (Piece(down, down_pick),))]

    def _expert_bias_assemblies(self, tensors: Mapping[str, TensorRef], bid: int, prefix: str, e: int, f: int,
                                h: int) -> list[Assembly]:
        gu, d = f"{prefix}.gate_up_proj_bias", f"{prefix}.down_proj_bias"
        for name, shape in ((gu, (e, 2 * f)), (d, (e, h))):
            if name not in tensors:
                raise ForgeError(f"the checkpoint lacks tensor {name} that {self.arch_name} needs; "
                                 "is the download complete?")
            if tuple(tensors[name].shape) != shape:
                raise ForgeError(f"tensor {name}: shape {list(tensors[name].shape)}, but config.json implies "
                                 f"{list(shape)}; the weights do not match the config")
        if self.fused_experts == "in_out_interleaved":
            gate, up = (lambda s: s[:, 0::2]), (lambda s: s[:, 1::2])
        else:
            gate, up = (lambda s: s[:, :f]), (lambda s: s[:, f:])
        out = f"blk.{bid}.ffn_%s_exps.bias"
        return [Assembly(out % "gate", (e, f), (Piece(gu, gate),)), Assembly(out % "up", (e, f), (Piece(gu, up),)),
                Assembly(out % "down", (e, h), (Piece(d),))]

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


def _swap_last(slab: np.ndarray) -> np.ndarray:
    """``[n, in, out]`` -> ``[n, out, in]`` (a :class:`Piece` pick for experts stored input-major)."""
    return slab.transpose(0, 2, 1)


def _import_architectures() -> None:
    """Import every module of this package; each registers its classes with :func:`register`."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_architectures()
