"""llama.cpp's own quantizer, in-process through llama-cpp-python (``llama_model_quantize``).

Type names are llama.cpp's (``Q4_K_M``, ``IQ4_XS``...), case-insensitive. Outputs are named
``<basename>-<TYPE>.gguf`` (``-im`` before ``.gguf`` when an importance matrix was used, the convention of
the seed projects' releases), written under a temporary name and renamed. The imatrix provenance keys
(``quantize.imatrix.file/dataset/entries_count/chunks_count``) are written as llama-quantize writes them, and
a ``quantize.forge.recipe`` key records what made the file so that an identical re-run is skipped.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ForgeError
from .imatrix_file import IMatrix, read_imatrix

# llama.cpp's type names (tools/quantize) -> llama_ftype values
FTYPES: dict[str, int] = {
    "Q1_0": 40, "Q2_0": 41, "Q4_0": 2, "Q4_1": 3, "MXFP4_MOE": 38, "Q5_0": 8, "Q5_1": 9,
    "IQ2_XXS": 19, "IQ2_XS": 20, "IQ2_S": 28, "IQ2_M": 29, "IQ1_S": 24, "IQ1_M": 31, "TQ1_0": 36, "TQ2_0": 37,
    "Q2_K": 10, "Q2_K_S": 21, "IQ3_XXS": 23, "IQ3_S": 26, "IQ3_M": 27, "Q3_K": 12, "IQ3_XS": 22,
    "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "IQ4_NL": 25, "IQ4_XS": 30, "Q4_K": 15, "Q4_K_S": 14,
    "Q4_K_M": 15, "Q5_K": 17, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7, "F16": 1, "BF16": 32, "F32": 0,
}
# file types whose tensors llama.cpp refuses to quantize without an importance matrix
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
# ggml tensor type names for --output-tensor-type / --token-embedding-type / --tensor-type
GGML_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11,
    "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19, "IQ4_NL": 20,
    "IQ3_S": 21, "IQ2_S": 22, "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30, "TQ1_0": 34, "TQ2_0": 35, "MXFP4": 39,
}


def parse_types(text: str) -> list[str]:
    """``Q4_K_M,q5_k_m`` -> ["Q4_K_M", "Q5_K_M"], refusing unknown names with the list of known ones."""
    out = []
    for t in (x.strip().upper() for x in text.split(",") if x.strip()):
        if t not in FTYPES:
            raise ForgeError(f"--type {t}: unknown quantization type; llama.cpp offers {', '.join(FTYPES)}")
        out.append(t)
    if not out:
        raise ForgeError("--type: give at least one type, e.g. Q4_K_M")
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


def _input_info(inp: Path) -> tuple[str, bool]:
    """(sha-ish identity of the input, whether its weights are already quantized)."""
    import gguf

    try:
        r = gguf.GGUFReader(inp)
    except Exception as e:
        raise ForgeError(f"{inp}: not a readable GGUF ({e})") from None
    quantized = any(t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                          gguf.GGMLQuantizationType.BF16) for t in r.tensors)
    st = inp.stat()
    ident = f"{inp.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return ident, quantized


def _existing_recipe(path: Path) -> str | None:
    import gguf

    try:
        f = gguf.GGUFReader(path).fields.get("quantize.forge.recipe")
        return bytes(f.parts[f.data[0]]).decode() if f else None
    except Exception:
        return None


def check_imatrix_fits(im: IMatrix, inp: Path, imatrix_path: Path) -> None:
    """Refuse an imatrix computed for another model (names or column counts that do not match)."""
    import gguf

    r = gguf.GGUFReader(inp)
    cols = {t.name: int(t.shape[0]) for t in r.tensors}
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
    outdir.mkdir(parents=True, exist_ok=True)
    if not os.access(outdir, os.W_OK):
        raise ForgeError(f"-o {outdir}: not writable")
    ident, quantized = _input_info(inp)
    if quantized and not allow_requantize:
        raise ForgeError(f"{inp}: its weights are already quantized; quantize from the F16/BF16/F32 file, "
                         "or pass --allow-requantize (quality suffers)")
    im = None
    im_hash = ""
    if imatrix:
        imatrix = Path(imatrix)
        im = read_imatrix(imatrix)
        check_imatrix_fits(im, inp, imatrix)
        im_hash = hashlib.sha256(imatrix.read_bytes()).hexdigest()[:16]
    overrides = []
    for spec in tensor_types or []:
        pattern, sep, t = spec.rpartition("=")
        if not sep or not pattern:
            raise ForgeError(f"--tensor-type {spec}: expected REGEX=TYPE, e.g. 'attn_v=q6_k'")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ForgeError(f"--tensor-type {spec}: bad regex ({e})") from None
        overrides.append((pattern, ggml_type(t, "--tensor-type")))
    out_t = ggml_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else -1
    emb_t = ggml_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else -1
    base = basename or _basename(inp)
    results = []
    for qtype in types:
        if qtype in NEEDS_IMATRIX and im is None:
            raise ForgeError(f"--type {qtype} needs an importance matrix: pass --imatrix FILE "
                             "(make one with `quantize imatrix`)")
        out = outdir / output_name(base, qtype, im is not None)
        recipe = hashlib.sha256(json.dumps([ident, qtype, im_hash, out_t, emb_t, overrides, pure, allow_requantize])
                                .encode()).hexdigest()[:32]
        if out.is_file() and not force and _existing_recipe(out) == recipe:
            results.append(QuantResult(qtype, out, True, out.stat().st_size, im is not None))
            continue
        _run_quantizer(llama_cpp, inp, out, qtype, im, imatrix_label or imatrix, recipe, threads, out_t, emb_t, overrides, pure,
                       allow_requantize)
        results.append(QuantResult(qtype, out, False, out.stat().st_size, im is not None))
    return results


def _run_quantizer(llama_cpp, inp, out, qtype, im, imatrix_path, recipe, threads, out_t, emb_t, overrides, pure,
                   allow_requantize) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = threads or 0
    if out_t >= 0:  # otherwise keep the default (GGML_TYPE_COUNT: "decide per file type")
        params.output_tensor_type = out_t
    if emb_t >= 0:
        params.token_embedding_type = emb_t
    params.pure = pure
    params.allow_requantize = allow_requantize
    keep: list = []  # ctypes buffers that must outlive the call
    if im is not None:
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
        params.imatrix = arr
    kvs = [("quantize.forge.recipe", recipe)]
    if im is not None:
        kvs += [("quantize.imatrix.file", str(imatrix_path)),
                ("quantize.imatrix.dataset", im.datasets[-1] if im.datasets else ""),
                ("quantize.imatrix.entries_count", len(im.sums)),
                ("quantize.imatrix.chunks_count", int(im.chunk_count))]
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
    params.kv_overrides = kv
    if overrides:
        tt = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, t) in enumerate(overrides):
            b = pattern.encode()
            keep.append(b)
            tt[i].pattern = b
            tt[i].type = t
        tt[len(overrides)].pattern = None
        keep.append(tt)
        params.tt_overrides = tt
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    messages: list[str] = []
    try:
        with _capture_llama_log(messages):
            rc = llama_cpp.llama_model_quantize(str(inp).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            reason = next((m.strip() for m in reversed(messages) if "error" in m.lower() or "failed" in m.lower()),
                          f"llama_model_quantize returned {rc}")
            raise ForgeError(f"--type {qtype}: llama.cpp refused: {reason}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


_SINK: list[str] | None = None
_CALLBACK = None


class _capture_llama_log:
    """Collect llama.cpp's log lines (to name the reason of a refusal) instead of printing them."""

    def __init__(self, sink: list[str]):
        self.sink = sink

    def __enter__(self):
        global _SINK, _CALLBACK
        import llama_cpp

        if _CALLBACK is None:  # installed once and kept alive: llama.cpp keeps the pointer

            def cb(level, text, user_data):
                if _SINK is not None and len(_SINK) < 10000:
                    _SINK.append(text.decode("utf-8", errors="replace"))

            _CALLBACK = llama_cpp.llama_log_callback(cb)
            llama_cpp.llama_log_set(_CALLBACK, ctypes.c_void_p())
        _SINK = self.sink
        return self

    def __exit__(self, *exc):
        global _SINK
        _SINK = None
        return False
