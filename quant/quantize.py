"""llama.cpp's own quantizer, in-process through llama-cpp-python (``llama_model_quantize``).

Type names are llama.cpp's (``Q4_K_M``, ``IQ4_XS``...), case-insensitive. Outputs are named
``<basename>-<TYPE>.gguf`` (``-im`` before ``.gguf`` when an importance matrix was used, the convention of
the seed projects' releases), written under a temporary name and renamed. The imatrix provenance keys
(``quantize.imatrix.file/dataset/entries_count/chunks_count``) are written as llama-quantize writes them, and
a ``quantize.forge.recipe`` key records what made the file so that an identical re-run is skipped.

``llama_model_quantize`` is one long C call. It runs in a worker thread while the calling (main) thread waits,
so that Ctrl-C and SIGTERM, which Python handles only in the main thread and only between bytecodes, interrupt
the wait at once: the temporary file is removed and nothing is renamed. The C call itself cannot be cancelled;
it is held at its next log line and the process is expected to exit (:func:`gguf_forge.runtime.quantizer_running`
tells a caller, the CLI, that it should leave with ``os._exit`` rather than wait for it).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .. import keys
from ..errors import ForgeError
from ..files import atomic_path, gguf_field, make_folder, open_gguf, sha256_file, sha256_text
from ..runtime import QUANTIZER_CALLS, LlamaLog
from .imatrix_file import IMatrix, read_imatrix


@functools.cache
def _llama_cpp_constant(name: str) -> int:
    import llama_cpp  # loads the shared library: only when a value is needed, not when a name is checked

    return int(getattr(llama_cpp, name))


class _LlamaEnum(Mapping[str, int]):
    """A name -> value table whose names are known at import and whose values are constants of llama.cpp's own
    enum in llama-cpp-python (``llama_cpp.LLAMA_FTYPE_*``), read on first use."""

    def __init__(self, constants: dict[str, str]) -> None:
        self._constants = constants  # our name -> llama_cpp constant name

    def __getitem__(self, name: str) -> int:
        return _llama_cpp_constant(self._constants[name])

    def __contains__(self, name: object) -> bool:
        return name in self._constants

    def __iter__(self) -> Iterator[str]:
        return iter(self._constants)

    def __len__(self) -> int:
        return len(self._constants)

    def __repr__(self) -> str:
        return repr(dict(self))


# The file types llama-quantize offers, named and ordered as it lists them (tools/quantize/quantize.cpp
# QUANT_OPTIONS, without COPY); the values are llama_cpp.LLAMA_FTYPE_* (gguf-py's LlamaFileType lacks Q2_0).
# llama.cpp's enum also has NVFP4, which llama-quantize does not offer.
_QUANT_OPTIONS = (
    "Q1_0", "Q2_0", "Q4_0", "Q4_1", "MXFP4_MOE", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S",
    "IQ1_M", "TQ1_0", "TQ2_0", "Q2_K", "Q2_K_S", "IQ3_XXS", "IQ3_S", "IQ3_M", "Q3_K", "IQ3_XS", "Q3_K_S", "Q3_K_M",
    "Q3_K_L", "IQ4_NL", "IQ4_XS", "Q4_K", "Q4_K_S", "Q4_K_M", "Q5_K", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16",
    "BF16", "F32",
)
# llama-quantize's aliases: a bare K-quant name is its _M mix
_QUANT_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def _ftype_constant(name: str) -> str:
    name = _QUANT_ALIASES.get(name, name)
    return "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"


#: llama.cpp's type names (``Q4_K_M``...) -> llama_ftype, the quantizer's own enum
FTYPES: Mapping[str, int] = _LlamaEnum({name: _ftype_constant(name) for name in _QUANT_OPTIONS})
#: file types whose tensors llama.cpp refuses to quantize without an importance matrix
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
# the ggml types a tensor may be given (llama_cpp's GGML_TYPE_* constants lack BF16, TQ1_0 and TQ2_0; gguf-py's
# enum of the same file-format values has them all)
_TENSOR_TYPES = (
    "F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS",
    "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "IQ1_M", "BF16", "TQ1_0", "TQ2_0", "MXFP4",
)
#: ggml tensor type names (per-tensor overrides, output and token-embedding types) -> ggml_type
GGML_TYPES: dict[str, int] = {name: int(gguf.GGMLQuantizationType[name]) for name in _TENSOR_TYPES}


def parse_types(text: str) -> list[str]:
    """``Q4_K_M,q5_k_m`` -> ["Q4_K_M", "Q5_K_M"], refusing unknown names with the list of known ones; a type
    named twice (``Q8_0,q8_0``) is made once, in the place it was first named."""
    out = []
    for t in (x.strip().upper() for x in text.split(",") if x.strip()):
        if t not in FTYPES:
            raise ForgeError(f"{t}: unknown quantization type; llama.cpp offers {', '.join(FTYPES)}")
        if t not in out:
            out.append(t)
    if not out:
        raise ForgeError("no quantization type given, e.g. Q4_K_M")
    return out


def ggml_type(name: str, option: str) -> int:
    t = name.strip().upper()
    if t not in GGML_TYPES:
        raise ForgeError(f"{option} {name}: unknown tensor type; choose from {', '.join(GGML_TYPES)}")
    return GGML_TYPES[t]


@dataclass
class QuantResult:
    type: str
    path: Path
    skipped: bool
    bytes: int
    imatrix: bool


def output_name(basename: str, qtype: str, with_imatrix: bool) -> str:
    return f"{basename}-{qtype}{'-im' if with_imatrix else ''}.gguf"


def _basename(inp: Path) -> str:
    stem = inp.stem
    return re.sub(r"[-.](F32|F16|BF16|f32|f16|bf16)$", "", stem)


def _input_info(inp: Path) -> tuple[str, bool, dict[str, int]]:
    """(identity of the input, whether its weights are already quantized, each tensor's column count)."""
    r = open_gguf(inp)
    unquantized = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
    quantized = any(t.tensor_type not in unquantized for t in r.tensors)
    cols = {t.name: int(t.shape[0]) for t in r.tensors}
    st = inp.stat()
    ident = f"{inp.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return ident, quantized, cols


def _existing_recipe(path: Path) -> str | None:
    try:
        return gguf_field(open_gguf(path), keys.Quantize.RECIPE)
    except Exception:  # an unreadable earlier output is simply redone
        return None


def check_imatrix_fits(im: IMatrix, cols: dict[str, int], inp: Path, imatrix_path: Path) -> None:
    """Refuse an imatrix computed for another model (names or column counts that do not match ``cols``,
    the column count of each tensor of ``inp``)."""
    matched = 0
    for name, s in im.sums.items():
        if name not in cols:
            raise ForgeError(f"--imatrix {imatrix_path}: entry {name} is not a tensor of {inp.name}; "
                             "was it computed for another model?")
        if s.shape[-1] != cols[name]:
            raise ForgeError(f"--imatrix {imatrix_path}: entry {name} has {s.shape[-1]} columns but {inp.name}'s "
                             f"tensor has {cols[name]}; was it computed for another model?")
        matched += 1
    if not matched:
        raise ForgeError(f"--imatrix {imatrix_path}: holds no entries")


def _tensor_overrides(tensor_types: list[str]) -> list[tuple[str, int]]:
    """``REGEX=TYPE`` specs -> (regex, ggml type) pairs."""
    overrides = []
    for spec in tensor_types:
        pattern, sep, t = spec.rpartition("=")
        if not sep or not pattern:
            raise ForgeError(f"--tensor-type {spec}: expected REGEX=TYPE, e.g. 'attn_v=q6_k'")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ForgeError(f"--tensor-type {spec}: bad regex ({e})") from None
        overrides.append((pattern, ggml_type(t, "--tensor-type")))
    return overrides


@dataclass
class _Recipe:
    """Everything but the type that decides a quant's content (its hash is recorded in the output)."""

    ident: str
    im: IMatrix | None
    im_hash: str
    im_label: str
    threads: int | None
    out_t: int
    emb_t: int
    overrides: list[tuple[str, int]]
    pure: bool
    allow_requantize: bool

    @property
    def plain(self) -> bool:
        """No per-tensor type changes: the quantizer would only re-encode the tensors as the file type says."""
        return self.out_t < 0 and self.emb_t < 0 and not self.overrides

    def key(self, qtype: str) -> str:
        return sha256_text(self.ident, qtype, self.im_hash, self.out_t, self.emb_t, self.overrides, self.pure,
                           self.allow_requantize)[:32]


def quantize(
    inp: str | os.PathLike[str], types: list[str], outdir: str | os.PathLike[str] | None = None,
    imatrix: str | os.PathLike[str] | None = None, threads: int | None = None,
    output_tensor_type: str | None = None, token_embedding_type: str | None = None,
    tensor_types: list[str] | None = None, pure: bool = False, allow_requantize: bool = False,
    force: bool = False, basename: str | None = None, imatrix_label: str | None = None,
) -> list[QuantResult]:
    """Quantize ``inp`` to each of ``types``; returns one result per type (skipped when identical exists).

    ``imatrix_label`` is what ``quantize.imatrix.file`` records (default: the path as given).
    """
    import llama_cpp

    inp = Path(inp)
    if not inp.is_file():
        raise ForgeError(f"{inp}: no such file")
    outdir = Path(outdir) if outdir else inp.parent
    ident, quantized, cols = _input_info(inp)
    if quantized and not allow_requantize:
        raise ForgeError(f"{inp}: its weights are already quantized; quantize from the F16/BF16/F32 file, "
                         "or pass --allow-requantize (quality suffers)")
    im = None
    im_hash = ""
    if imatrix:
        imatrix = Path(imatrix)
        im = read_imatrix(imatrix)
        check_imatrix_fits(im, cols, inp, imatrix)
        im_hash = sha256_file(imatrix)[:16]
    for qtype in types:
        if qtype in NEEDS_IMATRIX and im is None:
            raise ForgeError(f"--type {qtype} needs an importance matrix: pass --imatrix FILE "
                             "(make one with `quantize imatrix`)")
    recipe = _Recipe(
        ident, im, im_hash, str(imatrix_label or imatrix), threads, overrides=_tensor_overrides(tensor_types or []),
        out_t=ggml_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else -1,
        emb_t=ggml_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else -1,
        pure=pure, allow_requantize=allow_requantize)
    base = basename or _basename(inp)
    same = {qtype for qtype in types if _is_input(outdir / output_name(base, qtype, im is not None), inp)}
    for qtype in same:
        if not (_file_type(inp) == FTYPES[qtype] and im is None and recipe.plain):
            raise ForgeError(f"{inp}: the {qtype} output would replace the input itself; choose another output "
                             "folder or rename the input")
    try:  # only now that the input and the options are known to be good
        make_folder(outdir)
    except ForgeError as e:
        raise e.from_option("-o") from None
    results = []
    for qtype in types:
        out = outdir / output_name(base, qtype, im is not None)
        key = recipe.key(qtype)
        # the input already is that type under that name (Model-F16.gguf --type F16): it is the result, untouched
        skipped = qtype in same or (out.is_file() and not force and _existing_recipe(out) == key)
        if not skipped:
            _run_quantizer(llama_cpp, inp, out, qtype, recipe, key)
        results.append(QuantResult(qtype, out, skipped, out.stat().st_size, im is not None))
    return results


def _is_input(out: Path, inp: Path) -> bool:
    return out.exists() and inp.exists() and os.path.samefile(out, inp)


def _file_type(path: Path) -> int | None:
    """The ``general.file_type`` a GGUF records (None when it records none)."""
    value = gguf_field(open_gguf(path), keys.GENERAL.FILE_TYPE)
    return int(value) if isinstance(value, int) else None


def _imatrix_param(llama_cpp: Any, im: IMatrix, keep: list) -> Any:
    """The importance matrix as llama.cpp's null-terminated ``llama_model_imatrix_data`` array."""
    means = im.means()
    arr = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    for i, (name, m) in enumerate(sorted(means.items())):
        buf = np.ascontiguousarray(m, dtype=np.float32)
        keep.append(buf)
        arr[i].name = name.encode()
        arr[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = buf.size
    arr[len(means)].name = None
    keep.append(arr)
    return arr


def _kv_param(llama_cpp: Any, recipe: _Recipe, key: str, keep: list) -> Any:
    """The metadata to write (the recipe key, llama-quantize's imatrix provenance) as ``llama_model_kv_override``s."""
    im = recipe.im
    kvs: list[tuple[str, str | int]] = [(keys.Quantize.RECIPE, key)]
    if im is not None:
        kvs += [(keys.Quantize.IMATRIX_FILE, recipe.im_label),
                (keys.Quantize.IMATRIX_DATASET, im.datasets[-1] if im.datasets else ""),
                (keys.Quantize.IMATRIX_ENTRIES, len(im.sums)),
                (keys.Quantize.IMATRIX_CHUNKS, int(im.chunk_count))]
    kv = (llama_cpp.llama_model_kv_override * (len(kvs) + 1))()
    for i, (k, v) in enumerate(kvs):
        kv[i].key = k.encode()
        if isinstance(v, int):
            kv[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            kv[i].value.val_i64 = v
        else:
            kv[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            kv[i].value.val_str = v.encode()[:127]
    kv[len(kvs)].key = b""
    keep.append(kv)
    return kv


def _tensor_type_param(llama_cpp: Any, overrides: list[tuple[str, int]], keep: list) -> Any:
    """Per-tensor types as llama.cpp's null-terminated ``llama_model_tensor_override`` array."""
    tt = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
    for i, (pattern, t) in enumerate(overrides):
        b = pattern.encode()
        keep.append(b)
        tt[i].pattern = b
        tt[i].type = t
    tt[len(overrides)].pattern = None
    keep.append(tt)
    return tt


def _run_quantizer(llama_cpp: Any, inp: Path, out: Path, qtype: str, recipe: _Recipe, key: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = recipe.threads or 0
    if recipe.out_t >= 0:  # otherwise keep the default (GGML_TYPE_COUNT: "decide per file type")
        params.output_tensor_type = recipe.out_t
    if recipe.emb_t >= 0:
        params.token_embedding_type = recipe.emb_t
    params.pure = recipe.pure
    params.allow_requantize = recipe.allow_requantize
    keep: list = []  # ctypes buffers that must outlive the call
    if recipe.im is not None:
        params.imatrix = _imatrix_param(llama_cpp, recipe.im, keep)
    params.kv_overrides = _kv_param(llama_cpp, recipe, key, keep)
    if recipe.overrides:
        params.tt_overrides = _tensor_type_param(llama_cpp, recipe.overrides, keep)
    with atomic_path(out) as tmp, LlamaLog() as log:
        rc = _call_interruptibly(
            lambda: llama_cpp.llama_model_quantize(str(inp).encode(), str(tmp).encode(), ctypes.byref(params)))
        if rc != 0:
            reason = log.last_error() or f"llama_model_quantize returned {rc}"
            raise ForgeError(f"--type {qtype}: llama.cpp refused: {reason}")


# ---------------------------------------------------------------------------------------------- interrupts

class _Hold(list):
    """The lines of a log capture that stays open for the process's life: the abandoned quantizer thread, when it
    logs its next line (llama.cpp logs one per tensor), waits there forever; other threads' lines pass."""

    def __init__(self, thread: threading.Thread) -> None:
        super().__init__()
        self.thread = thread
        self.parked = threading.Event()

    def append(self, line: Any) -> None:
        if threading.current_thread() is self.thread:
            self.parked.set()
            threading.Event().wait()  # never returns to llama.cpp: nothing more is written


def _hold_at_next_line(thread: threading.Thread, done: threading.Event, patience: float = 2.0) -> None:
    """Hold the abandoned quantizer at its next log line, and wait (``patience`` seconds at most) until it is held
    or done, so that a temporary file it opened meanwhile is there for the caller's cleanup to remove."""
    hold = LlamaLog()
    lines = _Hold(thread)
    hold.lines = lines  # keeps nothing, so the capture never fills up
    hold.__enter__()  # never left
    deadline = time.monotonic() + patience
    while not (lines.parked.is_set() or done.is_set()) and time.monotonic() < deadline:
        lines.parked.wait(0.02)


def _call_interruptibly(call: Any) -> int:
    """``call()`` (the C quantizer) in a daemon thread while this thread waits, so Ctrl-C/SIGTERM stop the wait.

    On an interrupt the quantizer is held at its next log line (it writes only to the temporary file, which the
    caller's ``atomic_path`` removes; nothing is ever renamed) and the KeyboardInterrupt goes on."""
    outcome: dict[str, Any] = {}
    done = threading.Event()  # waited on rather than the thread: an interrupted Thread.join (Python < 3.13)
    #                           can mark a running thread as stopped

    def work() -> None:
        try:
            outcome["rc"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e
        finally:
            done.set()

    worker = threading.Thread(target=work, name="llama-quantize", daemon=True)
    QUANTIZER_CALLS.append(done)
    worker.start()
    try:
        while not done.wait(0.2):
            pass
    except BaseException:
        _hold_at_next_line(worker, done)
        raise
    QUANTIZER_CALLS.remove(done)
    if "error" in outcome:
        raise outcome["error"]
    return int(outcome["rc"])
