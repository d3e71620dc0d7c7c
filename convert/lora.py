"""PEFT LoRA adapters merged into a base checkpoint while it streams, exactly as peft's ``merge_and_unload``.

:class:`Adapter` reads ``adapter_config.json`` and the adapter weights (headers only, tensors on demand).
:class:`MergedCheckpoint` looks like a :class:`~.checkpoint.Checkpoint` to the converter and to
``quantize merge``: every tensor an adapter touches is produced slab by slab (rows), as float32:

- LoRA on a linear layer: ``W + weight * scale * B @ A`` (scale ``alpha / r``, ``alpha / sqrt(r)`` with rsLoRA,
  ``r``/``alpha`` from ``rank_pattern``/``alpha_pattern`` as peft resolves them);
- LoRA on an embedding: ``W + weight * scale * (B @ A).T``;
- DoRA: ``magnitude / ||W0 + delta||_row * (W + delta)`` with the norm taken on the unmerged base, as peft does;
- ``modules_to_save`` (and saved ``base_layer`` weights): the adapter's full tensor replaces the base's;
  a larger embedding/lm_head is a resized vocabulary (the adapter's tokenizer then wins); an lm_head on a base
  with tied embeddings unties it.

Several adapters are applied in the order given, each with its weight. Nothing is ever materialised beyond
one slab of rows of one tensor (plus that tensor's small A/B factors).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ForgeError
from ..files import read_json_object
from . import arch as arch_registry
from .checkpoint import Checkpoint, TensorRef, read_safetensors_header, read_tensor, row_slabs, to_float32, torch_load
from .config import F32_MAX, is_int, is_number, shown
from .resolve import resolve_model

PREFIX = "base_model.model."
SUPPORTED_PEFT = "LORA"
_UNSUPPORTED_OPTIONS = {
    "use_qalora": "QA-LoRA", "trainable_token_indices": "trainable tokens",
    "layer_replication": "layer replication", "alora_invocation_tokens": "activated LoRA", "use_bdlora": "BD-LoRA",
}


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora ADAPTER[:WEIGHT]``."""

    path: str
    weight: float = 1.0


def parse_lora_spec(text: str) -> LoraSpec:
    """``ADAPTER`` or ``ADAPTER:WEIGHT`` (weight a float, default 1)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return LoraSpec(text, 1.0)
        if not math.isfinite(weight):
            raise ForgeError(f"{text}: the weight {tail} is not a finite number")
        return LoraSpec(head, weight)
    return LoraSpec(text, 1.0)


@dataclass
class _Module:
    """One LoRA-adapted module of one adapter."""

    name: str  # e.g. model.layers.0.self_attn.q_proj
    a: str
    b: str
    kind: str  # "linear" or "embedding"
    magnitude: str | None = None
    bias: str | None = None
    scale: float = 0.0


@dataclass
class Adapter:
    """A PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``/``.bin``)."""

    path: Path
    weight: float = 1.0
    config: dict = field(default_factory=dict)
    refs: dict[str, TensorRef] = field(default_factory=dict)
    modules: dict[str, _Module] = field(default_factory=dict)  # by base tensor name (module + ".weight")
    replacements: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter tensor key
    #: LoRA on 3-D expert parameters (peft ``target_parameters``), by (module, parameter name)
    param_modules: dict[tuple[str, str], "_ParamModule"] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, weight: float = 1.0) -> "Adapter":
        path = Path(path)
        cfg_file = path / "adapter_config.json"
        if not path.is_dir():
            raise ForgeError(f"--lora {path}: not a directory")
        if not cfg_file.is_file():
            raise ForgeError(
                f"{cfg_file}: missing; --lora needs a PEFT adapter directory (adapter_config.json + weights)")
        config = read_json_object(cfg_file)
        kind = str(config.get("peft_type", "")).upper()
        if kind != SUPPORTED_PEFT:
            raise ForgeError(
                f"{cfg_file}: peft_type {config.get('peft_type')!r} cannot be merged; only LoRA adapters "
                "(peft_type LORA, including rsLoRA and DoRA) are supported"
            )
        for key, what in _UNSUPPORTED_OPTIONS.items():
            if config.get(key):
                raise ForgeError(f"{cfg_file}: {key} ({what}) is not supported for merging")
        check_adapter_config(config, cfg_file)
        ad = cls(path, weight, config)
        ad._load_weights()
        ad._classify()
        return ad

    # -- reading -------------------------------------------------------------------------
    def _load_weights(self) -> None:
        st = self.path / "adapter_model.safetensors"
        bin_file = self.path / "adapter_model.bin"
        self._torch: dict | None = None
        if st.is_file():
            self.refs = read_safetensors_header(st)
            for ref in self.refs.values():
                if ref.dtype not in ("F32", "F16", "BF16", "F64"):
                    raise ForgeError(f"{st}: tensor {ref.name} has dtype {ref.dtype}; adapter weights are floats")
        elif bin_file.is_file():
            self._torch = torch_load(bin_file)
            for k, v in self._torch.items():
                if not v.is_floating_point():
                    raise ForgeError(f"{bin_file}: tensor {k} has dtype {v.dtype}; adapter weights are floats")
            self.refs = {k: TensorRef(k, bin_file, "F32", tuple(v.shape)) for k, v in self._torch.items()}
        else:
            raise ForgeError(f"{self.path}: no adapter_model.safetensors or adapter_model.bin")
        if not self.refs:
            raise ForgeError(f"{self.path}: the adapter holds no tensors")

    def read(self, key: str) -> np.ndarray:
        """One adapter tensor as float32."""
        if self._torch is not None:
            return self._torch[key].detach().float().numpy()
        ref = self.refs[key]
        return _read_ref(ref)

    def read_raw(self, key: str) -> tuple[np.ndarray, str]:
        if self._torch is not None:
            return self.read(key), "F32"
        ref = self.refs[key]
        return _read_ref(ref, raw=True), ref.dtype

    # -- structure -----------------------------------------------------------------------
    def _classify(self) -> None:
        parts: dict[str, dict[str, str]] = {}
        for key in self.refs:
            name = key[len(PREFIX):] if key.startswith(PREFIX) else key
            m = re.match(r"^(.*)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
                         r"(?:\.(?:default\.)?(weight|bias))?$", name)
            if m:
                module, part, suffix = m.group(1), m.group(2), m.group(3)
                if part == "lora_B" and suffix == "bias":
                    part = "lora_B_bias"
                parts.setdefault(module, {})[part] = key
                continue
            if ".original_module." in name:
                continue  # peft's copy of the untrained base module
            if ".base_layer." in name:
                name = name.replace(".base_layer.", ".")
            wrapped = re.sub(r"\.modules_to_save\.(?:[^.]+\.)?(?=(?:weight|bias)$)", ".", name)
            if wrapped != name and wrapped in self.replacements:
                continue  # the plain key (what peft loads) wins over the wrapper's copy
            self.replacements[wrapped] = key
        for module in [m for m in parts if _is_param_wrapper(m, self.config)]:
            self._classify_param(module, parts.pop(module))
        for module, p in parts.items():
            if "lora_A" in p and "lora_B" in p:
                mod = _Module(module, p["lora_A"], p["lora_B"], "linear", p.get("lora_magnitude_vector"),
                              p.get("lora_B_bias"))
            elif "lora_embedding_A" in p and "lora_embedding_B" in p:
                if "lora_magnitude_vector" in p:
                    raise ForgeError(f"{self.path}: DoRA on the embedding layer {module} is not supported")
                mod = _Module(module, p["lora_embedding_A"], p["lora_embedding_B"], "embedding")
            else:
                raise ForgeError(f"{self.path}: adapter tensor {next(iter(p.values()))} has no matching A/B partner")
            for key in (mod.a, mod.b):
                if len(self.refs[key].shape) != 2:
                    raise ForgeError(f"{self.path}: adapter tensor {key} has shape {list(self.refs[key].shape)}; "
                                     "LoRA factors are matrices")
            mod.scale = self._scale(module, self.refs[mod.a].shape[0])
            self.modules[module + ".weight"] = mod

    def _classify_param(self, module: str, p: dict[str, str]) -> None:
        """A peft ``ParamWrapper`` (``target_parameters``): ``lora_A`` ``[r x n_expert, in]``, ``lora_B`` ``[out, r x
        n_expert]`` on one 3-D parameter of ``module`` (nested wrappers: ``module.base_layer``...). Which parameter
        is resolved against the base's shapes in :class:`MergedCheckpoint`."""
        if set(p) != {"lora_A", "lora_B"}:
            raise ForgeError(f"{self.path}: adapter tensor {next(iter(p.values()))}: LoRA on parameters "
                             "(target_parameters) supports plain lora_A/lora_B factors only")
        for key in p.values():
            if len(self.refs[key].shape) != 2:
                raise ForgeError(f"{self.path}: adapter tensor {key} has shape {list(self.refs[key].shape)}; "
                                 "LoRA factors are matrices")
        base = re.sub(r"(\.base_layer)+$", "", module)
        depth = (len(module) - len(base)) // len(".base_layer")
        params = _target_params(base, self.config)
        self.param_modules[(base, f"#{depth}")] = _ParamModule(base, params, depth, p["lora_A"], p["lora_B"])

    def _scale(self, module: str, rank_in_file: int) -> float:
        from_pattern = _pattern_value(self.config.get("rank_pattern") or {}, module)
        r = int(from_pattern if from_pattern is not None else self.config.get("r") or 8)
        if r != rank_in_file:
            raise ForgeError(
                f"{self.path}: adapter tensor for {module} has rank {rank_in_file} but adapter_config.json "
                f"gives r={r} for it"
            )
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module)
        if alpha is None:
            alpha = self.config.get("lora_alpha")
        alpha = float(8 if alpha is None else alpha)
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    @property
    def base_model_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer.json").is_file() or (self.path / "tokenizer.model").is_file()


def _pattern_value(patterns: dict, module: str):
    """peft's rule: the first pattern key ``k`` with ``re.match(rf"(.*\\.)?({k})$", module)``."""
    for k, v in patterns.items():
        if re.match(rf"(.*\.)?({k})$", module):
            return v
    return None


def check_adapter_config(config: dict, source: Path) -> None:
    """The keys the merge reads from ``adapter_config.json``: ``r`` and ``rank_pattern`` ranks positive integers,
    ``lora_alpha`` and ``alpha_pattern`` finite numbers, patterns valid regular expressions, flags booleans."""

    def fail(key: str, what: str, value) -> None:
        raise ForgeError(f"{source}: {key} must be {what}, got {shown(value)}")

    r = config.get("r")
    if r is not None and not (is_int(r) and r > 0):
        fail("r", "a positive integer (the LoRA rank)", r)
    alpha = config.get("lora_alpha")
    if alpha is not None and not (is_number(alpha) and math.isfinite(alpha)):
        fail("lora_alpha", "a finite number", alpha)
    for key, ok, what in (("rank_pattern", lambda v: is_int(v) and v > 0, "positive integers"),
                          ("alpha_pattern", lambda v: is_number(v) and math.isfinite(v), "finite numbers")):
        patterns = config.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            fail(key, "an object mapping module patterns to values", patterns)
        for k, v in patterns.items():
            if not ok(v):
                fail(f"{key}[{k!r}]", what, v)
            try:
                re.compile(rf"(.*\.)?({k})$")
            except re.error as e:
                raise ForgeError(f"{source}: {key} pattern {k!r} is not a valid regular expression ({e})") from None
    for key in ("use_rslora", "use_dora"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            fail(key, "true or false", config[key])
    name = config.get("base_model_name_or_path")
    if name is not None and not isinstance(name, str):
        fail("base_model_name_or_path", "a string", name)


def _read_ref(ref: TensorRef, raw: bool = False) -> np.ndarray:
    arr = read_tensor(ref)
    return arr if raw else to_float32(arr, ref.dtype)


class MergedCheckpoint:
    """A base :class:`Checkpoint` with adapters merged in on the fly (same reading interface)."""

    def __init__(self, base: Checkpoint, adapters: list[Adapter]):
        self.base = base
        self.adapters = adapters
        self.path = base.path
        self.config = dict(base.config)
        self.tokenizer_path = base.path
        for ad in adapters:
            if ad.has_tokenizer():
                self.tokenizer_path = ad.path
        self.warnings: list[str] = []
        self._sources: dict[str, tuple[Adapter, str] | None] = {}  # name -> replacement (last wins)
        self._loras: dict[str, list[tuple[Adapter, _Module]]] = {}
        self._bf16: set[str] = set()  # merged as bf16 (see write_bf16)
        self.tensors: dict[str, TensorRef] = dict(base.tensors)
        for ad in adapters:
            _match_text_prefix(ad, base.tensors)
        self._check_names()
        self._build()
        self._param_loras: dict[str, list[_ExpertDelta]] = _build_param_loras(self)
        self._factor_cache: dict[tuple[int, str], tuple] = {}
        self._buffers = _BufferPool()  # slab buffers of the merge, reused (no page faults per slab)
        self._worker = None  # the one merge thread, kept for every tensor (see _merge_worker)
        if self._loras:
            self._merge_worker().submit(_warm_up)  # torch's import (~1 s) beside the header and the first tensors

    def _merge_worker(self):
        """The thread that runs every slab's delta product, created once: a thread per tensor would also start a
        new OpenMP team for torch per tensor."""
        if self._worker is None:
            from concurrent.futures import ThreadPoolExecutor

            self._worker = ThreadPoolExecutor(1, thread_name_prefix="lora-merge")
        return self._worker

    # -- validation and structure ----------------------------------------------------------
    def _check_names(self) -> None:
        base_name = str(self.base.config.get("_name_or_path") or self.base.path.name)
        for ad in self.adapters:
            want = ad.base_model_name
            if want and Path(want).name.lower() != Path(base_name).name.lower() and \
                    Path(want).name.lower() != self.base.path.name.lower():
                msg = (f"{ad.path}: adapter was trained on {want!r} but the base is {self.base.path.name!r}; "
                       "merging anyway (shapes are checked)")
                self.warnings.append(msg)

    def _build(self) -> None:
        tied = bool(self.config.get("tie_word_embeddings", False))
        embed = "model.embed_tokens.weight"
        for ad in self.adapters:
            for name, key in ad.replacements.items():
                name = _stored_name(name, self.tensors)
                ref = ad.refs[key]
                base_ref = self.tensors.get(name)
                if base_ref is None and not (name == "lm_head.weight" and tied and embed in self.tensors):
                    raise ForgeError(f"adapter tensor {key}: the base model has no tensor {name}")
                expected = base_ref.shape if base_ref is not None else self.tensors[embed].shape
                vocab_like = name in (embed, "lm_head.weight")
                if ref.shape != expected and not (vocab_like and ref.shape[1:] == expected[1:]):
                    raise ForgeError(
                        f"adapter tensor {key}: shape {list(ref.shape)} does not fit the base's {name} "
                        f"{list(expected)}; was the adapter trained on another model?"
                    )
                if ad.weight != 1.0:
                    self.warnings.append(f"{ad.path}: {name} is replaced whole (modules_to_save); "
                                         f"its weight {ad.weight} does not apply")
                self._sources[name] = (ad, key)
                self.tensors[name] = TensorRef(name, ref.file, "F32", ref.shape)
            for name, mod in ad.modules.items():
                name = _stored_name(name, self.tensors)
                if name not in self.tensors and not (name == "lm_head.weight" and tied and embed in self.tensors):
                    raise ForgeError(f"adapter tensor {mod.a}: the base model has no module {mod.name}")
                target = self.tensors.get(name) or self.tensors[embed]
                self._check_module(ad, mod, name, target)
                a_shape, b_shape = ad.refs[mod.a].shape, ad.refs[mod.b].shape
                rows, cols = target.shape[0], target.shape[1]
                if mod.kind == "linear":
                    ok = a_shape[1] == cols and b_shape[0] == rows and a_shape[0] == b_shape[1]
                else:
                    ok = a_shape[1] == rows and b_shape[0] == cols and a_shape[0] == b_shape[1]
                if not ok:
                    raise ForgeError(
                        f"adapter tensor {mod.a}: LoRA factors {list(a_shape)} x {list(b_shape)} do not fit the base's "
                        f"{name} {list(target.shape)}; was the adapter trained on another model?"
                    )
                if mod.bias is not None:
                    bias = _stored_name(mod.name + ".bias", self.tensors)
                    if bias not in self.tensors:
                        raise ForgeError(f"adapter tensor {mod.bias}: lora_bias needs a bias in the base's {mod.name}")
                    self._loras.setdefault(bias, []).append((ad, mod))
                    self.tensors[bias] = TensorRef(bias, target.file, "F32", self.tensors[bias].shape)
                self._loras.setdefault(name, []).append((ad, mod))
                self.tensors[name] = TensorRef(name, target.file, "F32", target.shape)
        if tied and "lm_head.weight" in self.tensors:
            self.config["tie_word_embeddings"] = False  # the adapter changed lm_head: untie
        if embed in self.tensors:
            rows = self.tensors[embed].shape[0]
            if rows != (self.config.get("vocab_size") or rows):
                self.config["vocab_size"] = rows
                if self.tokenizer_path == self.base.path:
                    self.warnings.append(
                        "the adapter resizes the vocabulary but has no tokenizer; the base's is padded")
            head = self.tensors.get("lm_head.weight")
            if head is not None and head.shape[0] != rows:
                raise ForgeError(f"lm_head has {head.shape[0]} rows but embed_tokens has {rows} after merging")

    @staticmethod
    def _check_module(ad: Adapter, mod: _Module, name: str, target: TensorRef) -> None:
        """The base tensor a LoRA module changes is a matrix, and DoRA magnitudes and LoRA biases have one value
        per row of it."""
        if len(target.shape) != 2:
            raise ForgeError(f"adapter tensor {mod.a}: LoRA on {name}, which is not a matrix "
                             f"(shape {list(target.shape)})")
        if not abs(ad.weight * mod.scale) <= F32_MAX:
            raise ForgeError(f"{ad.path}: the LoRA scale of {mod.name} (weight {ad.weight:g} x {mod.scale:g} from "
                             "lora_alpha and r) does not fit a float32")
        for key in (mod.magnitude, mod.bias):
            if key is not None and math.prod(ad.refs[key].shape) != target.shape[0]:
                raise ForgeError(f"adapter tensor {key}: {math.prod(ad.refs[key].shape)} values, but {name} has "
                                 f"{target.shape[0]} rows; was the adapter trained on another model?")

    def changed_tensors(self) -> set[str]:
        """The names (the checkpoint's own) of the tensors whose values the adapters change: the weights (and
        biases) of LoRA/DoRA modules, tensors replaced whole (``modules_to_save``), and the 3-D expert parameters
        of peft's ``target_parameters``. Every other tensor reads as the base's. A tied ``lm_head`` an adapter
        changes is listed under its own name (the merged checkpoint unties it)."""
        return set(self._loras) | set(self._sources) | set(self._param_loras)

    # -- Checkpoint interface ------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> Iterator[str]:
        seen = set()
        for n in self.base.names():
            seen.add(n)
            yield n
        for n in self.tensors:
            if n not in seen:
                yield n

    def read(self, name: str) -> np.ndarray:
        slabs = [np.array(s, copy=True) for s in self.iter_rows(name, 1 << 62)]  # the slabs' buffers are reused
        return slabs[0] if len(slabs) == 1 else np.concatenate(slabs)

    def read_float32(self, name: str) -> np.ndarray:
        return to_float32(self.read(name), self.tensors[name].dtype)

    def write_bf16(self) -> None:
        """The caller writes BF16: a tensor merged from a BF16 base by plain LoRA modules (no DoRA, bias or
        replacement) is then produced as BF16 (its bits as uint16, dtype ``BF16``) by torch, in place in the slab:

        - BF16 factors: one bf16 ``addmm`` (float32 accumulation, one rounding): against the float32 merge rounded
          to bf16, about one value in 10^5 differs, by one bf16 ulp of the result (bench/merge.py measures it);
        - other factors (F32, peft's default; F16): the float32 merge itself (the slab widened to float32, ``addmm``
          in float32, rounded to bf16 once, round-to-nearest-even): the same bits as the float32 merge encoded to
          BF16. Rounding F32 factors to bf16 instead is not exact enough (about one value in 10 moves).
        """
        for name, mods in self._loras.items():
            if name in self._sources or name.endswith(".bias") or name not in self.base.tensors:
                continue
            if self.base.tensors[name].dtype != "BF16":
                continue
            if all(m.magnitude is None for _, m in mods):
                self._bf16.add(name)
                ref = self.tensors[name]
                self.tensors[name] = TensorRef(name, ref.file, "BF16", ref.shape)

    def iter_rows(self, name: str, slab_bytes: int) -> Iterator[np.ndarray]:
        """Rows of the merged tensor (float32 when an adapter touches it, raw base data otherwise; BF16 bits after
        :meth:`write_bf16` for the tensors it names). Each slab's delta product runs in a worker thread while the
        next slab is read and the previous one is encoded and written."""
        if name in self._param_loras:  # LoRA on 3-D expert parameters (target_parameters)
            yield from self._param_merged_rows(name, slab_bytes)
            return
        loras = self._loras.get(name, [])
        source = self._sources.get(name)
        if not loras and source is None:
            yield from self.base.iter_rows(name, slab_bytes)
            return
        import torch

        if source is not None:
            ad, key = source
            raw, dtype = ad.read_raw(key)
            base_slabs: Iterator[tuple[np.ndarray, str]] = ((s, dtype) for s in row_slabs(raw, slab_bytes))
        else:
            src_name = name if name in self.base.tensors else "model.embed_tokens.weight"  # tied lm_head
            dtype = self.base.tensors[src_name].dtype
            base_slabs = ((s, dtype) for s in self.base.iter_rows(src_name, slab_bytes // 2))
        bf16 = name in self._bf16
        # bf16 factors merge by bf16 matmuls; any other factor takes the float32 merge (see write_bf16)
        bf16_factors = bf16 and all(ad._torch is None and ad.refs[m.a].dtype == "BF16" and ad.refs[m.b].dtype == "BF16"
                                    for ad, m in loras)
        factors = [(ad, mod, *_factors(ad, mod, name, bf16_factors)) for ad, mod in loras]

        def merge(slab: np.ndarray, dtype: str, start: int) -> np.ndarray:
            _use_threads(bf16 and bf16_factors)
            if bf16:  # in place in the slab (a buffer of ours): BF16 bits in, BF16 bits out
                w = torch.from_numpy(slab.view(np.int16)).view(torch.bfloat16)
                rows = w.shape[0]
                if bf16_factors:
                    for ad, mod, a, b, _, _ in factors:
                        left, right = (b[start:start + rows], a) if mod.kind == "linear" else \
                            (a[:, start:start + rows].T, b.T)
                        w.addmm_(left, right, alpha=ad.weight * mod.scale)
                    return slab
                scratch = self._buffers.take(w.numel() * 4)
                try:
                    w32 = torch.from_numpy(scratch[:w.numel() * 4].view(np.float32)).view(w.shape)
                    w32.copy_(w)
                    for ad, mod, a, b, _, _ in factors:
                        left, right = (b[start:start + rows], a) if mod.kind == "linear" else \
                            (a[:, start:start + rows].T, b.T)
                        w32.addmm_(left, right, alpha=ad.weight * mod.scale)
                    w.copy_(w32)  # one rounding to bf16, to nearest even (as the converter's encoder)
                finally:
                    self._buffers.give(scratch)
                return slab
            if dtype == "BF16":
                w0 = torch.from_numpy(slab.view(np.int16)).view(torch.bfloat16).float()
            else:
                w0 = torch.from_numpy(np.ascontiguousarray(to_float32(slab, dtype), dtype=np.float32))
            rows = w0.shape[0]
            w = w0.clone() if any(m.magnitude for _, m, *_ in factors) else w0
            for ad, mod, a, b, mag, bias in factors:
                scale = ad.weight * mod.scale
                if name.endswith(".bias"):
                    w = w + scale * bias[start:start + rows]
                    continue
                left, right = (b[start:start + rows], a) if mod.kind == "linear" else (a[:, start:start + rows].T, b.T)
                if mag is not None:
                    delta = scale * (left @ right)
                    norm = torch.linalg.norm(w0 + delta, dim=1)
                    w = (mag[start:start + rows] / norm).unsqueeze(1) * (w + delta)
                elif w is w0:
                    w0.addmm_(left, right, alpha=scale)  # fused W += scale * B @ A, no temporary
                else:
                    w = w.addmm_(left, right, alpha=scale)
            return w.numpy()

        # Slabs are merged in a worker thread (torch runs the matmuls on all cores, without the GIL), AHEAD slabs
        # ahead of the one handed out, while this thread reads the next slab and the caller encodes and writes.
        # Each slab is copied into a buffer of ours (the base reader reuses its own) taken from a pool, so no slab
        # costs fresh pages; a buffer handed out is reused once the caller asks for the next slab.
        from collections import deque
        from concurrent.futures import wait

        pool = self._merge_worker()
        pending: deque = deque()
        held: list[np.ndarray] = []  # buffers taken by this generator
        try:
            start = 0
            for slab, dtype in base_slabs:
                if len(held) > _AHEAD:  # the oldest buffer (handed out last time) is free again
                    self._buffers.give(held.pop(0))
                buf = self._buffers.take(slab.nbytes)
                held.append(buf)
                own = buf[:slab.nbytes].view(slab.dtype).reshape(slab.shape)
                np.copyto(own, slab)
                pending.append(pool.submit(merge, own, dtype, start))
                start += slab.shape[0]
                if len(pending) > _AHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            wait(pending)  # none still writes to a buffer given back below
            for buf in held:
                self._buffers.give(buf)


    def _param_merged_rows(self, name: str, slab_bytes: int) -> Iterator[np.ndarray]:
        """Rows of a tensor that LoRA on a 3-D expert parameter changes: a fused ``[n_expert, ...]`` tensor read in
        slabs of whole experts, or one expert's 2-D tensor (or its half of a fused gate/up parameter), each plus
        ``scale x B_e @ A_e`` (transposed for parameters stored ``[in, out]``), as peft's merge computes it."""
        import torch

        deltas = self._param_loras[name]
        dtype = self.base.tensors[name].dtype
        start = 0
        for slab in self.base.iter_rows(name, slab_bytes):
            w = torch.from_numpy(np.array(to_float32(slab, dtype), dtype=np.float32, copy=True))
            n = w.shape[0]
            for d in deltas:
                a, b = self._param_factors(d)
                if d.expert is None:  # fused: the slab's rows are experts start..start + n
                    for i in range(n):
                        w[i] += d.scale * _expert_delta(a, b, d, start + i)
                else:
                    w += d.scale * _expert_delta(a, b, d, d.expert, d.row0 + start, n)
            start += n
            yield w.numpy()

    def _param_factors(self, d: "_ExpertDelta"):
        """lora_A / lora_B of one parameter LoRA as float32 tensors; the last few are kept (a layer's experts read
        one after another use the same factors)."""
        import torch

        key = (id(d.adapter), d.module.a)
        got = self._factor_cache.get(key)
        if got is None:
            got = (torch.from_numpy(d.adapter.read(d.module.a)), torch.from_numpy(d.adapter.read(d.module.b)))
            if len(self._factor_cache) >= 4:
                self._factor_cache.pop(next(iter(self._factor_cache)))
            self._factor_cache[key] = got
        return got


#: slabs merged ahead of the one handed out (each holds one slab buffer)
_AHEAD = 2


#: the merge thread's OpenMP thread counts: "all" (torch's, all cores) and "bf16" (all but one), with "set", the
#: per-thread setter of torch's own libgomp (see _warm_up)
_THREADS: dict = {}


def _use_threads(bf16: bool) -> None:
    """This thread's products run on all cores but one for bf16 products (on 2 cores none then spins at a barrier
    waiting for the core the writer holds: less CPU, and measured no slower), on all for float32 ones (twice the
    work: measured faster on both). ``torch.set_num_threads`` would change the whole process's count; OpenMP's is a
    per-thread setting."""
    if "set" in _THREADS:
        _THREADS["set"](_THREADS["bf16" if bf16 else "all"])


def _warm_up() -> None:
    """In the merge thread, before the first slab needs it: import torch (~1.7 CPU s; Python's cyclic garbage
    collector, paused meanwhile, would add a quarter to that), find how to set this thread's OpenMP thread count
    (see :func:`_use_threads`) and run one small product of each kind the merge uses."""
    import ctypes
    import gc

    collecting = gc.isenabled()
    gc.disable()
    try:
        import torch
    finally:
        if collecting:
            gc.enable()
    n = torch.get_num_threads()
    lib = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if n > 1 and lib.is_file() and "OpenMP" in torch.__config__.parallel_info():
        try:
            _THREADS.update(set=ctypes.CDLL(str(lib)).omp_set_num_threads, all=n, bf16=n - 1)
        except (OSError, AttributeError):
            pass
    for dt in (torch.bfloat16, torch.float32):
        w = torch.zeros(64, 256, dtype=dt)
        w.addmm_(torch.zeros(64, 16, dtype=dt), torch.zeros(16, 256, dtype=dt), alpha=0.5)


class _BufferPool:
    """Byte buffers for merge slabs, reused: a fresh 32-64 MB array costs a page fault per 4 KiB page (as long as
    half the slab's delta product on a 2-core machine); a reused one costs nothing. Buffers are at least ``MIN``
    large (pages never written are never resident), so that any slab fits any buffer; larger ones (whole-tensor
    reads) are not kept, nor more than ``KEEP`` of them."""

    MIN, MAX, KEEP = 64 << 20, 256 << 20, 8

    def __init__(self) -> None:
        import threading

        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.nbytes >= nbytes:
                    return self._free.pop(i)
        return np.empty(max(nbytes, self.MIN), dtype=np.uint8)

    def give(self, buf: np.ndarray) -> None:
        if buf.nbytes <= self.MAX:
            with self._lock:
                if len(self._free) < self.KEEP:
                    self._free.append(buf)


# -- issue 11 (multimodal checkpoints): peft names modules by transformers' runtime layout
# (model.language_model.*), which may differ from the layout the checkpoint stores (language_model.model.*)
_LAYOUTS = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))


def _stored_name(name: str, tensors: dict) -> str:
    """The checkpoint's name for a tensor an adapter names in the other multimodal layout (else ``name``)."""
    if name in tensors:
        return name
    for a, b in _LAYOUTS:
        for src, dst in ((a, b), (b, a)):
            if name.startswith(src) and dst + name[len(src):] in tensors:
                return dst + name[len(src):]
    return name


def _factors(ad: Adapter, mod: _Module, name: str, bf16: bool = False):
    import torch

    if bf16:  # the stored bf16 bits, unconverted (write_bf16 checked the factors are BF16)
        a, b = (torch.from_numpy(np.ascontiguousarray(ad.read_raw(k)[0]).view(np.int16)).view(torch.bfloat16)
                for k in (mod.a, mod.b))
        return a, b, None, None
    a = torch.from_numpy(ad.read(mod.a))
    b = torch.from_numpy(ad.read(mod.b))
    mag = torch.from_numpy(ad.read(mod.magnitude).reshape(-1)) if mod.magnitude else None
    bias = torch.from_numpy(ad.read(mod.bias).reshape(-1)) if mod.bias and name.endswith(".bias") else None
    return a, b, mag, bias


#: where a multimodal checkpoint (transformers 5) keeps its text model, and that model's own names
_TEXT_IN_MULTIMODAL, _TEXT_ALONE = "model.language_model.", "model."


def _match_text_prefix(ad: Adapter, tensors: dict[str, TensorRef]) -> None:
    """Rename an adapter's targets to the base's names when one side is a multimodal checkpoint and the other its
    text model alone: an adapter trained on ``AutoModelForCausalLM.from_pretrained`` of a Qwen3.5 checkpoint names
    ``model.layers...`` while the checkpoint stores ``model.language_model.layers...``, and the reverse. Only names
    absent from the base whose counterpart is present change."""
    def fix(name: str, exists) -> str:
        if exists(name):
            return name
        for src, dst in ((_TEXT_ALONE, _TEXT_IN_MULTIMODAL), (_TEXT_IN_MULTIMODAL, _TEXT_ALONE)):
            if name.startswith(src) and not (src == _TEXT_ALONE and name.startswith(_TEXT_IN_MULTIMODAL)):
                other = dst + name[len(src):]
                if exists(other):
                    return other
        return name

    def module_exists(module: str) -> bool:
        return any(n.startswith(module + ".") for n in tensors)

    modules = {}
    for key, mod in ad.modules.items():
        key = fix(key, tensors.__contains__)
        mod.name = key[: -len(".weight")]
        modules[key] = mod
    ad.modules = modules
    ad.replacements = {fix(k, tensors.__contains__): v for k, v in ad.replacements.items()}
    params = {}
    for (module, param), pm in ad.param_modules.items():
        pm.module = fix(module, module_exists)
        params[(pm.module, param)] = pm
    ad.param_modules = params


def merged_source(base: Checkpoint, specs: list[LoraSpec]) -> MergedCheckpoint:
    """Resolve ``--lora`` specs (paths or hub ids) and wrap ``base``."""
    adapters = [Adapter.load(resolve_model(s.path, what="--lora"), s.weight) for s in specs]
    return MergedCheckpoint(base, adapters)


# -- LoRA on 3-D expert parameters (peft target_parameters) -------------------------------------------------------
@dataclass
class _ParamModule:
    """One peft ``ParamWrapper`` of an adapter: LoRA on a 3-D expert parameter of ``module``."""

    module: str  # e.g. model.layers.0.mlp.experts
    params: list[str]  # the parameter names target_parameters names for this module, in order
    depth: int  # 0: the outermost wrapper (the last of params), 1: the one inside it...
    a: str
    b: str


@dataclass
class _ExpertDelta:
    """``scale x B_e @ A_e`` rows ``row0..`` (of expert ``expert``; None: every expert of a fused tensor) added to one
    base tensor; ``transposed``: the parameter is stored ``[in, out]`` (gpt-oss)."""

    adapter: Adapter
    module: _ParamModule
    param: str
    n_expert: int
    scale: float
    transposed: bool
    expert: int | None = None
    row0: int = 0


def _target_params(module: str, config: dict) -> list[str]:
    """Parameter names of ``module`` that ``target_parameters`` names (peft: ``module.param`` equals a target or ends
    with ``.`` + target)."""
    out = []
    for t in config.get("target_parameters") or []:
        pname = str(t).rsplit(".", 1)[-1]
        key = f"{module}.{pname}"
        if key == t or key.endswith("." + str(t)):
            out.append(pname)
    return out


def _is_param_wrapper(module: str, config: dict) -> bool:
    if not config.get("target_parameters"):
        return False
    base = re.sub(r"(\.base_layer)+$", "", module)
    return base != module or bool(_target_params(base, config))


def _expert_delta(a, b, d: _ExpertDelta, e: int, row: int = 0, n: int | None = None):
    """Rows ``row..row + n`` of expert ``e``'s delta in the parameter's layout (peft: ``lora_A`` is expert-major
    ``[e x r + i]``, ``lora_B`` rank-major ``[:, i x n_expert + e]``)."""
    r = a.shape[0] // d.n_expert
    a_e = a[e * r:(e + 1) * r]  # [r, in]
    b_e = b[:, e::d.n_expert]  # [out, r]
    if d.transposed:  # stored [in, out]: rows are inputs
        a_e = a_e if n is None else a_e[:, row:row + n]
        return (b_e @ a_e).T
    return b_e @ a_e if n is None else b_e[row:row + n] @ a_e


def _build_param_loras(merged: "MergedCheckpoint") -> dict[str, list[_ExpertDelta]]:
    """Where each adapter's parameter LoRAs land in the base checkpoint: the fused tensor ``module.param`` itself,
    or (Qwen-MoE saved per expert) ``module.{e}.gate_proj/up_proj/down_proj.weight``. The parameter's layout
    (``[n_expert, out, in]`` or ``[n_expert, in, out]``) comes from the architecture (``fused_experts``)."""
    out: dict[str, list[_ExpertDelta]] = {}
    adapters_with = [ad for ad in merged.adapters if ad.param_modules]
    if not adapters_with:
        return out
    layout = getattr(arch_registry.for_config(merged.base.config), "fused_experts", "out_in")
    tensors = merged.base.tensors
    for ad in adapters_with:
        for pm in ad.param_modules.values():
            a_shape, b_shape = ad.refs[pm.a].shape, ad.refs[pm.b].shape
            for name, delta in _param_targets(ad, pm, a_shape, b_shape, tensors, layout):
                if name in merged._loras or name in merged._sources:
                    raise ForgeError(f"adapter tensor {pm.a}: {name} is also changed by a LoRA on the per-expert "
                                     "module or replaced; merge these adapters one at a time")
                out.setdefault(name, []).append(delta)
                merged.tensors[name] = TensorRef(name, tensors[name].file, "F32", tensors[name].shape)
    return out


def _param_targets(ad: Adapter, pm: _ParamModule, a_shape, b_shape, tensors: dict[str, TensorRef], layout: str):
    """(base tensor, delta) pairs for one parameter LoRA, after matching its factors to one targeted parameter."""
    transposed = layout != "out_in"
    candidates = []
    for param in pm.params:
        fused = f"{pm.module}.{param}"
        if f"{fused}_blocks" in tensors:
            raise ForgeError(f"adapter tensor {pm.a}: LoRA on {fused}, which the base stores as MXFP4; merging into "
                             "quantized experts is not supported (merge into a bf16 copy of the model)")
        if fused in tensors and len(tensors[fused].shape) == 3:
            e, x, y = tensors[fused].shape
            out_f, in_f = (y, x) if transposed else (x, y)
            candidates.append((param, e, out_f, in_f, [(fused, None, 0)]))
            continue
        per = [n for n in tensors if re.fullmatch(rf"{re.escape(pm.module)}\.\d+\.(gate|up|down)_proj\.weight", n)]
        if not per:
            continue
        e = 1 + max(int(n[len(pm.module) + 1:].split(".")[0]) for n in per)
        if param == "gate_up_proj" and not transposed:
            g = tensors.get(f"{pm.module}.0.gate_proj.weight")
            if g is not None:
                rows, cols = g.shape
                targets = [(f"{pm.module}.{x}.{w}_proj.weight", x, off)
                           for x in range(e) for w, off in (("gate", 0), ("up", rows))]
                candidates.append((param, e, 2 * rows, cols, targets))
        elif param == "down_proj" and not transposed:
            dn = tensors.get(f"{pm.module}.0.down_proj.weight")
            if dn is not None:
                candidates.append((param, e, dn.shape[0], dn.shape[1],
                                   [(f"{pm.module}.{x}.down_proj.weight", x, 0) for x in range(e)]))
    fits = [c for c in candidates if a_shape[1] == c[3] and b_shape[0] == c[2] and a_shape[0] == b_shape[1]
            and a_shape[0] % c[1] == 0]
    if len(fits) > 1:  # same shapes: peft nests wrappers in target_parameters order (the last one outermost)
        want = pm.params[len(pm.params) - 1 - pm.depth] if pm.depth < len(pm.params) else None
        fits = [c for c in fits if c[0] == want]
    if len(fits) != 1:
        raise ForgeError(f"adapter tensor {pm.a}: LoRA factors {list(a_shape)} x {list(b_shape)} fit no expert "
                         f"parameter {pm.params} of the base's {pm.module}; was the adapter trained on another model?")
    param, e, _, _, targets = fits[0]
    scale = ad.weight * ad._scale(pm.module, a_shape[0] // e)
    if not abs(scale) <= F32_MAX:
        raise ForgeError(f"{ad.path}: the LoRA scale of {pm.module}.{param} does not fit a float32")
    for name, x, off in targets:
        if name not in tensors:
            raise ForgeError(f"adapter tensor {pm.a}: the base model has no tensor {name}")
        yield name, _ExpertDelta(ad, pm, param, e, scale, transposed, x, off)
