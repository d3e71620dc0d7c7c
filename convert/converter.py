"""Hugging Face checkpoint -> GGUF, one tensor (and for large tensors, one slab of rows) at a time.

The GGUF header (metadata and tensor infos) is computed from the safetensors headers alone; then
tensor data is streamed: read a slab of rows, rearrange/convert it, write it, drop it. Peak memory
is one slab (or, for tensors that must be rearranged as a whole, such as Q/K rope rows, one tensor).
Every slab is written at its offset in the file (the header fixes them all), so sources are read in storage order
even where the GGUF order differs: a layer's per-expert tensors are read once, expert by expert, and each slab is
placed in its stacked ``ffn_{gate,up,down}_exps`` tensor. Reading and encoding run in a thread beside the writes.
The output is written under a temporary name in the target folder and renamed when complete.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import gguf
import numpy as np
import yaml

from ..errors import ForgeError
from ..files import atomic_path, check_not_an_input
from ..files import progress as progress_bar
from ..keys import TOKENIZER
from . import arch as arch_registry
from .checkpoint import (
    Checkpoint,
    NonFiniteError,
    bf16_from_f32,
    check_finite,
    nonfinite_at,
    row_slabs,
    to_float32,
)
from .config import F32_MAX, one_line, shown
from .lora import LoraSpec, MergedCheckpoint, merged_source
from .overrides import KVOverride, apply_overrides
from .tokenizer import load_vocab

T = gguf.GGMLQuantizationType
OUTTYPES: dict[str, tuple[T, gguf.LlamaFileType]] = {
    "f32": (T.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (T.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (T.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (T.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
SLAB_BYTES = 64 << 20  # rows are read and written in slabs of about this many source bytes


@dataclass
class ConvertResult:
    """What :func:`convert` produced."""

    path: Path
    arch: str
    outtype: str
    n_tensors: int
    n_params: int
    nbytes: int
    pre_tokenizer: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Planned:
    gguf_name: str
    hf_name: str | None  # None: computed tensor (data in ``data``)
    shape: tuple[int, ...]
    src_dtype: str
    qtype: T
    data: np.ndarray | None = None
    assembly: arch_registry.Assembly | None = None  # built from several Hugging Face tensors (hf_name: the first)

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.shape)) if self.shape else 1
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        return n // block * type_size


def resolve_outtype(outtype: str, ckpt: Checkpoint) -> str:
    """``auto`` -> bf16 for bf16 checkpoints, f16 otherwise (as llama.cpp's converter does)."""
    outtype = outtype.lower()
    if outtype != "auto":
        if outtype not in OUTTYPES:
            raise ForgeError(f"output type {outtype}: choose one of auto, {', '.join(OUTTYPES)}")
        return outtype
    floats = [r.dtype for r in ckpt.tensors.values() if r.dtype in ("F32", "F16", "BF16")]
    if floats and max(set(floats), key=floats.count) == "BF16":
        return "bf16"
    return "f16"


def _target_type(outtype: str, gguf_name: str, shape: tuple[int, ...]) -> T:
    if len(shape) < 2 or gguf_name.startswith("rope_freqs"):
        return T.F32  # norms, biases and rope factors stay float32, as llama.cpp expects
    if not gguf_name.endswith(".weight") or ".ffn_gate_inp." in gguf_name:
        return T.F32  # 2-D biases (per-expert) and MoE routers too, as llama.cpp's converter writes them
    qtype = OUTTYPES[outtype][0]
    if qtype == T.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] != 0:
        return T.F16
    return qtype


def encode(raw: np.ndarray, src_dtype: str, qtype: T) -> np.ndarray:
    """Convert raw source data (BF16 as uint16 bits) to the bytes of GGML type ``qtype``."""
    if qtype == T.BF16 and src_dtype == "BF16":
        return raw
    if qtype == T.F16 and src_dtype == "F16":
        return raw
    f32 = to_float32(raw, src_dtype)
    if qtype == T.F32:
        return np.ascontiguousarray(f32, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow and NaN are checked for (or allowed) by the caller
        if qtype == T.F16:
            return f32.astype(np.float16)
        if qtype == T.BF16:
            return bf16_from_f32(f32)
        return gguf.quants.quantize(np.ascontiguousarray(f32), qtype)


def convert(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    outtype: str = "auto",
    overrides: list[KVOverride] | None = None,
    progress: bool = True,
    name: str | None = None,
    loras: list[LoraSpec] | None = None,
    allow_nonfinite: bool = False,
) -> ConvertResult:
    """Convert the Hugging Face model directory ``model`` to the GGUF file ``out``.

    ``overrides`` replace or add metadata keys after everything else is set (``--ctx`` and
    ``--rope-theta`` are expressed as overrides). ``loras`` are PEFT adapters merged in while streaming
    (see :mod:`.lora`). Every slab is checked for NaN and infinity as it streams: a tensor holding any is a
    :class:`~.checkpoint.NonFiniteError` unless ``allow_nonfinite``. Raises :class:`ForgeError` on bad input and
    leaves no file at ``out`` unless the conversion completed.
    """
    ckpt: Checkpoint | MergedCheckpoint = Checkpoint(model)
    if loras:
        ckpt = merged_source(ckpt, loras)
    out = Path(out)
    overrides = list(overrides or [])
    arch = arch_registry.for_config(ckpt.config)
    keep_quantized = outtype.lower() not in ("f32", "f16", "bf16")  # quantized experts (MXFP4) stay as they are
    outtype = resolve_outtype(outtype, getattr(ckpt, "base", ckpt))
    if outtype == "bf16" and isinstance(ckpt, MergedCheckpoint):
        ckpt.write_bf16()  # plain bf16 LoRA merged by bf16 matmuls (float32 accumulation): half the work
    _check_output_dir(out)
    check_not_an_input(out, [ckpt.path, *(ad.path for ad in getattr(ckpt, "adapters", []))])

    plan = _plan(ckpt, arch, outtype, keep_quantized)
    pre_override = next((o.value for o in overrides if o.key == TOKENIZER.PRE), None)
    vocab = load_vocab(ckpt.tokenizer_path, arch.n_vocab, pre_override=str(pre_override) if pre_override else None)
    if vocab.special is not None and any(o.key == TOKENIZER.CHAT_TEMPLATE for o in overrides):
        vocab.special.chat_template = None  # a template given by the user (--template) replaces the named ones too

    n_params = sum(int(np.prod(p.shape)) for p in plan if not p.gguf_name.startswith("rope_freqs"))
    writer = gguf.GGUFWriter(path=None, arch=arch.arch_name)
    with atomic_path(out) as tmp:
        try:
            # experts kept as MXFP4 (gpt-oss as released): the file type llama.cpp's converter gives such a file
            ftype = gguf.LlamaFileType.MOSTLY_MXFP4_MOE if any(p.qtype == T.MXFP4 for p in plan) else None
            _add_metadata(writer, ckpt, arch, outtype, n_params, name, ftype)
            vocab.add_to_gguf(writer)
            apply_overrides(writer, overrides)
            check_metadata(writer)
            for p in plan:
                _add_info(writer, p)
            writer.open_output_file(tmp)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            fout = writer.fout[0]  # type: ignore[index]
            fout.flush()  # tensor data goes in with positioned writes from here on
            offsets, end = _data_offsets(plan, fout.tell(), writer.data_alignment)
            with progress_bar(sum(p.nbytes for p in plan), f"writing {out.name}", enabled=progress) as bar:
                chunks = _encoded_chunks(ckpt, arch, plan, offsets, allow_nonfinite)
                _write_tensor_data(fout.fileno(), chunks, end, bar.update)
            writer.close()
        except BaseException:
            try:
                writer.close()  # before atomic_path removes the temporary file
            except Exception:
                pass
            raise
    warnings = list(getattr(ckpt, "warnings", [])) + list(getattr(arch, "warnings", [])) + vocab.warnings
    return ConvertResult(out, arch.arch_name, outtype, len(plan), n_params, out.stat().st_size, vocab.pre, warnings)


def _data_offsets(plan: list[_Planned], header_end: int, align: int) -> tuple[list[int], int]:
    """Each planned tensor's byte offset in the file (the data section starts at the first aligned offset after the
    header; every tensor is padded to the alignment, as the tensor infos say), and the file's final length."""
    pos = header_end + (-header_end) % align
    offsets = []
    for p in plan:
        offsets.append(pos)
        pos += p.nbytes + (-p.nbytes) % align
    return offsets, pos


def _write_tensor_data(fd: int, chunks: Iterator[tuple[int, memoryview]], end: int,
                       advance: Callable[[int], object]) -> None:
    """Write every (file offset, bytes) chunk where it belongs, set the file's length to ``end`` (the padding between
    tensors reads as zeros) and fsync; ``advance(n)`` is told each chunk's size.

    Reading, merging and encoding run in a background thread while this one writes. Positioned writes let the
    reader go through the checkpoint in storage order even where the GGUF file wants another order (per-expert
    tensors stored expert by expert, stacked into one tensor per projection: see :func:`_scatter_groups`)."""
    try:
        for off, data in _prefetch(chunks, depth=3):
            n, chunk = len(data), data
            while data:
                k = os.pwrite(fd, data, off)
                data, off = data[k:], off + k
            _COPIES.give(chunk)
            advance(n)
    finally:
        _COPIES.clear()
    os.ftruncate(fd, end)
    os.fsync(fd)


def _scatter_groups(plan: list[_Planned]) -> dict[int, list[int]]:
    """Assemblies read together, every source once in storage order, their slabs written where each belongs: runs of
    consecutive plan entries in one block (``blk.N.``) whose pieces are plain whole tensors (no ``pick``, no
    ``also``, not already quantized), e.g. a layer's gate, up and down experts stored expert by expert. Keyed by
    the first member's plan index."""
    groups: dict[int, list[int]] = {}
    run: list[int] = []

    def plain(p: _Planned) -> bool:
        a = p.assembly
        return a is not None and a.qtype is None and all(x.pick is None and not x.also for x in a.pieces)

    def block(p: _Planned) -> str:
        return p.gguf_name.split(".", 2)[1] if p.gguf_name.startswith("blk.") else ""

    for i, p in enumerate(plan + [None]):  # type: ignore[operator]
        if p is not None and plain(p) and (not run or block(plan[run[0]]) == block(p)):
            run.append(i)
            continue
        if len(run) > 1:
            groups[run[0]] = run
        run = [i] if p is not None and plain(p) else []
    return groups


def _encoded_chunks(ckpt, arch: arch_registry.Architecture, plan: list[_Planned], offsets: list[int],
                    allow_nonfinite: bool = False) -> Iterator[tuple[int, memoryview]]:
    """(file offset, bytes) of every tensor's data; ``offsets``: each planned tensor's (see :func:`_data_offsets`).

    Each slab is checked for NaN and infinity before it is encoded (unless ``allow_nonfinite``)."""
    groups = _scatter_groups(plan)
    in_group = {i for g in groups.values() for i in g}
    order = {n: k for k, n in enumerate(ckpt.names())} if groups else {}
    fresh_reads = type(ckpt) is Checkpoint  # its whole-tensor reads are new arrays nothing else holds
    for i, p in enumerate(plan):
        if i in groups:
            yield from _scattered(ckpt, plan, groups[i], offsets, order, allow_nonfinite)
            continue
        if i in in_group:
            continue
        pos = offsets[i]
        if p.assembly is not None:
            for chunk, chunk_dtype, src, row in p.assembly.chunks(ckpt, SLAB_BYTES):
                if p.assembly.qtype is not None:  # already GGML data (e.g. MXFP4 blocks)
                    data = memoryview(np.array(chunk, copy=True, order="C")).cast("B")
                else:
                    data = _encoded(chunk, chunk_dtype, p.qtype, src, row, allow_nonfinite,
                                    fresh_reads and p.assembly.pieces[0].pick is None)
                yield pos, data
                pos += len(data)
            continue
        row = 0
        for chunk, chunk_dtype in _tensor_chunks(ckpt, arch, p):
            data = _encoded(chunk, chunk_dtype, p.qtype, p.hf_name or p.gguf_name, row, allow_nonfinite, fresh_reads)
            yield pos, data
            pos += len(data)
            row += chunk.shape[0] if chunk.ndim else 1


def _scattered(ckpt, plan: list[_Planned], group: list[int], offsets: list[int], order: dict[str, int],
               allow_nonfinite: bool) -> Iterator[tuple[int, memoryview]]:
    """The data of a scatter group (see :func:`_scatter_groups`): every piece of its assemblies read once, in storage
    order, in slabs, each encoded slab placed at its offset inside its assembly. Memory: one slab, as always."""
    fresh_reads = type(ckpt) is Checkpoint
    where: list[tuple[int, str, int]] = []  # (storage position, source, file offset)
    for i in group:
        p = plan[i]
        block, type_size = gguf.GGML_QUANT_SIZES[p.qtype]
        pos = offsets[i]
        for piece in p.assembly.pieces:  # type: ignore[union-attr]
            where.append((order[piece.hf_name], piece.hf_name, pos))
            pos += ckpt.tensors[piece.hf_name].n_elements // block * type_size
        if pos - offsets[i] != p.nbytes:
            raise ForgeError(f"tensor {p.gguf_name}: internal error, its pieces hold {pos - offsets[i]} bytes "
                             f"of {p.nbytes}")
    qtypes = {piece.hf_name: plan[i].qtype for i in group for piece in plan[i].assembly.pieces}  # type: ignore
    for _, name, pos in sorted(where):
        row = 0
        dtype = ckpt.tensors[name].dtype
        for slab in ckpt.iter_rows(name, SLAB_BYTES):
            chunk = slab.reshape(-1, slab.shape[-1]) if slab.ndim > 2 else slab
            data = _encoded(chunk, dtype, qtypes[name], name, row, allow_nonfinite, fresh_reads)
            yield pos, data
            pos += len(data)
            row += slab.shape[0]


def _encoded(chunk: np.ndarray, chunk_dtype: str, qtype: T, name: str, row: int,
             allow_nonfinite: bool, fresh: bool = False) -> memoryview:
    """One slab checked for NaN/infinity (unless allowed) and encoded to ``qtype``; ``row``: its first row in the
    tensor ``name`` (for messages). ``fresh``: a chunk that owns its data (no view of a reused read buffer) is
    handed on without a copy when its bytes are already the output's."""
    if not allow_nonfinite:
        check_finite(chunk, chunk_dtype, name, row)
    data = encode(chunk, chunk_dtype, qtype)
    if not allow_nonfinite and qtype == T.F16 and chunk_dtype != "F16" and nonfinite_at(data, "F16") is not None:
        raise NonFiniteError(f"tensor {name}: values beyond float16's range (65504) would be written "
                             f"as infinity (from row {row}); convert to bf16 or f32 instead")
    # copy: the reader reuses its slab buffer for the next rows while this one waits to be written
    if data is chunk and not (fresh and chunk.base is None and chunk.flags.c_contiguous):
        return _COPIES.copy(data)
    return memoryview(np.ascontiguousarray(data)).cast("B")


class _CopyPool:
    """Buffers for the slab copies handed to the writer thread, reused once written: a fresh 64 MB array costs a
    page fault per page (on fast storage, as much as the write itself). The writer gives each chunk back after
    writing it (:meth:`give` ignores chunks that are not ours) and drops the pool's buffers when it is done."""

    KEEP = 8

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._out: dict[int, np.ndarray] = {}  # id -> buffer handed out
        self._lock = threading.Lock()

    def copy(self, arr: np.ndarray) -> memoryview:
        n = arr.nbytes
        with self._lock:
            i = next((i for i, b in enumerate(self._free) if b.nbytes >= n), None)
            buf = self._free.pop(i) if i is not None else None
        if buf is None:
            buf = np.empty(max(n, SLAB_BYTES), dtype=np.uint8)
        view = buf[:n]
        np.copyto(view.view(arr.dtype).reshape(arr.shape), arr)
        with self._lock:
            self._out[id(view)] = buf
        return memoryview(view)

    def give(self, data: memoryview) -> None:
        with self._lock:
            buf = self._out.pop(id(data.obj), None)
            if buf is not None and len(self._free) < self.KEEP and buf.nbytes <= 4 * SLAB_BYTES:
                self._free.append(buf)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._out.clear()


_COPIES = _CopyPool()


def _prefetch(items: Iterator, depth: int) -> Iterator:
    """Run an iterator in a background thread, ``depth`` items ahead; its exceptions surface here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put(it, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            it = q.get()
            if it is done:
                return
            if isinstance(it, BaseException):
                raise it
            yield it
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _add_info(writer: gguf.GGUFWriter, p: _Planned) -> None:
    # tensor_dtype other than uint8 tells the writer that ``shape`` is in elements, not bytes
    writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)


def _check_output_dir(out: Path) -> None:
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ForgeError(f"{out}: is a directory; give the output file name, e.g. {out / 'model-F16.gguf'}")
    if not folder.is_dir():
        raise ForgeError(f"{out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ForgeError(f"{out}: folder {folder} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise ForgeError(f"{out}: exists and is not writable")


def _plan(ckpt: Checkpoint, arch: arch_registry.Architecture, outtype: str,
          keep_quantized: bool = True) -> list[_Planned]:
    plan: list[_Planned] = []
    seen: dict[str, str] = {}
    assembled = _assembled(ckpt, arch, keep_quantized)  # first piece's name -> assemblies written there
    consumed = {n for group in assembled.values() for a in group for n in a.hf_names}
    for hf_name in ckpt.names():
        for a in assembled.get(hf_name, []):
            if a.gguf_name in seen:
                raise ForgeError(f"tensors {seen[a.gguf_name]} and {hf_name} both map to {a.gguf_name}")
            seen[a.gguf_name] = hf_name
            qtype = a.qtype if a.qtype is not None else _target_type(outtype, a.gguf_name, a.shape)
            plan.append(_Planned(a.gguf_name, hf_name, a.shape, ckpt.tensors[hf_name].dtype, qtype, assembly=a))
        if hf_name in consumed:
            continue
        gname = arch.gguf_name(hf_name)
        if gname is None:
            continue
        if gname in seen:
            raise ForgeError(f"tensors {seen[gname]} and {hf_name} both map to {gname}")
        seen[gname] = hf_name
        ref = ckpt.tensors[hf_name]
        if ref.dtype not in ("F32", "F16", "BF16"):
            raise ForgeError(f"tensor {hf_name}: dtype {ref.dtype} is not a float type; "
                             "quantized checkpoints are not supported")
        shape = arch.gguf_shape(gname, ref.shape)
        qtype = T.F32 if gname.endswith(arch.f32_tensors) else _target_type(outtype, gname, shape)
        plan.append(_Planned(gname, hf_name, shape, ref.dtype, qtype))
    if "token_embd.weight" in seen:
        embd_rows = ckpt.tensors[seen["token_embd.weight"]].shape[0]
        if embd_rows != arch.n_vocab:
            raise ForgeError(
                f"tensor {seen['token_embd.weight']}: {embd_rows} rows but config.json says vocab_size={arch.n_vocab}"
            )
    arch.check_complete(set(seen))
    for p in plan:
        arch.check_shape(p.hf_name or p.gguf_name, p.gguf_name, p.shape)
    for gname, data in arch.extra_tensors().items():
        plan.append(_Planned(gname, None, data.shape, "F32", T.F32, data))
    return plan


def _assembled(ckpt: Checkpoint, arch: arch_registry.Architecture,
               keep_quantized: bool = True) -> dict[str, list[arch_registry.Assembly]]:
    """The architecture's assembled tensors (see :meth:`Architecture.assemblies`), keyed by the piece read first;
    already-quantized ones that can be dequantized exactly are, unless ``keep_quantized``."""
    order = {n: i for i, n in enumerate(ckpt.names())}
    out: dict[str, list[arch_registry.Assembly]] = {}
    for a in arch.assemblies(ckpt.tensors):
        for n in a.hf_names:
            if n not in ckpt.tensors:
                raise ForgeError(f"the checkpoint lacks tensor {n} that {a.gguf_name} is built from")
            dtype = ckpt.tensors[n].dtype
            if a.qtype is None and dtype not in ("F32", "F16", "BF16"):
                raise ForgeError(f"tensor {n}: dtype {dtype} is not a float type; "
                                 "quantized checkpoints are not supported")
        if a.qtype is not None and a.dequant is not None and not keep_quantized:
            a = _dequantized(a)
        first = min(a.hf_names, key=order.__getitem__)
        out.setdefault(first, []).append(a)
    return out


def _dequantized(a: arch_registry.Assembly) -> arch_registry.Assembly:
    """``a`` with every piece's GGML data turned into its exact float32 values (then encoded like any tensor)."""
    dequant = a.dequant
    assert dequant is not None

    def wrap(pick):
        def run(*slabs: np.ndarray) -> np.ndarray:
            raw = np.ascontiguousarray(pick(*slabs) if pick is not None else slabs[0])
            return dequant(raw.reshape(-1, raw.shape[-1]))
        return run

    pieces = tuple(arch_registry.Piece(p.hf_name, wrap(p.pick), p.also) for p in a.pieces)
    return arch_registry.Assembly(a.gguf_name, a.shape, pieces)


def _tensor_chunks(
    ckpt: Checkpoint, arch: arch_registry.Architecture, p: _Planned
) -> Iterator[tuple[np.ndarray, str]]:
    """Yield (slab of rows, its dtype name); a transform may turn raw data into float32."""
    if p.hf_name is None:
        assert p.data is not None
        yield p.data, "F32"
        return
    if arch.rearranges(p.gguf_name) or len(p.shape) < 2:
        raw = ckpt.read(p.hf_name)
        data = arch.transform(p.gguf_name, raw, p.src_dtype)
        dtype = p.src_dtype if data.dtype == raw.dtype else "F32"
        if data.dtype != raw.dtype and data.dtype != np.float32:
            raise ForgeError(f"tensor {p.hf_name}: internal error, transform returned {data.dtype}")
        if data.shape != tuple(p.shape):
            raise ForgeError(f"tensor {p.hf_name}: internal error, shape changed in transform")
        for slab in row_slabs(data, SLAB_BYTES):
            yield slab, dtype
        return
    for slab in ckpt.iter_rows(p.hf_name, SLAB_BYTES):
        yield slab, p.src_dtype


def check_metadata(writer: gguf.GGUFWriter) -> None:
    """Every metadata value fits its GGUF type and every float is finite: checked before the file is opened, as a
    value that does not pack would otherwise fail half-way through writing it."""
    floats = (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64)
    for key, val in writer.kv_data[0].items():
        try:
            if val.type == gguf.GGUFValueType.ARRAY and _plain_array(val.value):
                continue
            if val.type in floats and not math.isfinite(val.value):
                raise ValueError("not a finite number")
            writer._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type)
        except (struct.error, OverflowError, TypeError, ValueError, AttributeError) as e:
            kind = val.type.name.lower() if val.type != gguf.GGUFValueType.ARRAY else "array"
            raise ForgeError(f"metadata {key}: {shown(val.value)} cannot be stored as {kind} ({one_line(e)})") from None


def _plain_array(values: list) -> bool:
    """True for an array of strings, int32s, finite float32s or booleans that packs as it is (checked at C speed,
    where packing a 262k-token vocabulary twice would not be); ValueError for a bad one, False: pack to see."""
    if not values:
        return True
    if all(type(v) is str for v in values):
        "".join(values).encode("utf-8")  # a lone surrogate cannot be written
        return True
    if all(type(v) is int for v in values):
        if min(values) < -(2**31) or max(values) >= 2**31:
            raise ValueError("a value does not fit int32")
        return True
    if all(type(v) is float for v in values):
        arr = np.asarray(values, dtype=np.float64)
        if not np.isfinite(arr).all() or np.abs(arr).max() > F32_MAX:
            raise ValueError("not every value is a finite float32")
        return True
    return all(type(v) is bool for v in values)


def _add_metadata(
    w: gguf.GGUFWriter, ckpt: Checkpoint, arch: arch_registry.Architecture, outtype: str, n_params: int,
    name: str | None, file_type: gguf.LlamaFileType | None = None,
) -> None:
    logging.getLogger("gguf").setLevel(logging.ERROR)
    try:
        meta = gguf.Metadata.load(model_path=ckpt.path, model_name=name, total_params=n_params)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise ForgeError(f"{ckpt.path}: the model card (README.md) or generation_config.json cannot be read "
                         f"for metadata ({one_line(e)})") from None
    if meta.name is None:
        meta.name = name or ckpt.path.name
    if meta.size_label is None and n_params:
        meta.size_label = gguf.size_label(n_params, 0, 0, 0)
    meta.set_gguf_meta_model(w)
    w.add_type(gguf.GGUFType.MODEL)
    arch.add_hparams(w)
    w.add_file_type(file_type if file_type is not None else OUTTYPES[outtype][1])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
