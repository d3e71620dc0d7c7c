"""Streaming access to a Hugging Face checkpoint directory.

A :class:`Checkpoint` knows every tensor's name, dtype and shape from the safetensors headers
(or the ``pytorch_model*.bin`` index) without reading any weight data, and reads one tensor
at a time on request. Nothing here ever holds more than the tensor being asked for.

bfloat16 data is returned as ``numpy.uint16`` holding the raw bits (numpy has no bfloat16);
:attr:`TensorRef.dtype` says ``"BF16"`` so callers know how to read it.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np

from ..errors import ForgeError
from ..files import read_json_object
from .config import check_config, shown

# safetensors dtype name -> (numpy dtype used to hold the raw data, bytes per element)
_ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: its file, dtype name (``F32``, ``BF16``...), shape and byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0  # absolute byte offset in ``file`` (safetensors only)
    nbytes: int = 0

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


#: the safetensors library's limit on a header
MAX_HEADER_BYTES = 100_000_000


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse one ``.safetensors`` file's header, validated as strictly as the safetensors library does.

    Every tensor needs a known ``dtype``, a ``shape`` of non-negative integers and ``data_offsets`` whose span
    is exactly its size; the spans, in offset order, must tile the data from its first byte to the file's last
    (no overlap, no gap, nothing missing, nothing after). ``__metadata__`` maps strings to strings.
    """
    size, n, raw = _header_bytes(path)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ForgeError(f"{path}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ForgeError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    base = 8 + n
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise ForgeError(f"{path}: __metadata__ must map names to strings")
            continue
        refs[name] = _tensor_ref(path, name, info, base)
    _check_layout(path, refs, base, size)
    return refs


def _header_bytes(path: Path) -> tuple[int, int, bytes]:
    """(file size, header length, header bytes) of a safetensors file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ForgeError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise ForgeError(f"{path}: not a safetensors file or truncated (header of {n} bytes announced)")
            return size, n, f.read(n)
    except OSError as e:
        raise ForgeError(f"{path}: cannot read ({e.strerror})") from None


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _tensor_ref(path: Path, name: str, info: object, base: int) -> TensorRef:
    """One header entry checked: dtype, shape and offsets present, well typed and consistent."""
    if not isinstance(info, dict):
        raise ForgeError(f"{path}: tensor {name}: header entry is a {type(info).__name__}, not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise ForgeError(f"{path}: tensor {name}: header entry has no {key}")
    dt, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dt, str) or dt not in _ST_DTYPES:
        raise ForgeError(f"{path}: tensor {name} has unsupported dtype {shown(dt)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ForgeError(f"{path}: tensor {name}: shape must be a list of non-negative integers, got {shown(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise ForgeError(
            f"{path}: tensor {name}: data_offsets must be [begin, end] with 0 <= begin <= end, got {shown(offsets)}")
    begin, end = offsets
    ref = TensorRef(name, path, dt, tuple(shape), base + begin, end - begin)
    if ref.n_elements * _ST_DTYPES[dt].itemsize != ref.nbytes:
        raise ForgeError(f"{path}: tensor {name} has inconsistent size in the header "
                         f"({dt} {list(shape)} needs {ref.n_elements * _ST_DTYPES[dt].itemsize} bytes, "
                         f"data_offsets give {ref.nbytes})")
    return ref


def _check_layout(path: Path, refs: dict[str, TensorRef], base: int, size: int) -> None:
    """The tensors' byte ranges, in offset order, cover the data exactly: no overlap, gap, shortfall or excess."""
    at, last = base, None
    for ref in sorted(refs.values(), key=lambda r: (r.offset, r.nbytes)):
        if ref.offset < at:
            raise ForgeError(f"{path}: tensor {ref.name} overlaps tensor {last} in the file (data_offsets); "
                             "the file is corrupt")
        if ref.offset > at:
            raise ForgeError(f"{path}: {ref.offset - at} bytes before tensor {ref.name} belong to no tensor "
                             "(data_offsets); the file is corrupt")
        at, last = ref.offset + ref.nbytes, ref.name
    if at > size:
        raise ForgeError(
            f"{path}: file is truncated: tensor {last} ends at byte {at} "
            f"but the file has {size} bytes; download it again"
        )
    if at < size:
        raise ForgeError(f"{path}: {size - at} bytes after the last tensor's data belong to no tensor; "
                         "the file is corrupt")


class Checkpoint:
    """A Hugging Face model directory: ``config.json`` plus safetensors or ``.bin`` weights."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ForgeError(f"{self.path}: not a directory")
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise ForgeError(f"{cfg_file}: missing; a Hugging Face model directory needs its config.json")
        self.config: dict = read_json_object(cfg_file)
        check_config(self.config, cfg_file)
        self.tokenizer_path = self.path  # where the tokenizer files are (an adapter may bring its own)
        self.tensors: dict[str, TensorRef] = {}
        self._torch_files: dict[Path, dict] = {}
        self._find_weights()

    # -- discovery -----------------------------------------------------------------------
    def _find_weights(self) -> None:
        p = self.path
        st_index = p / "model.safetensors.index.json"
        if st_index.is_file():
            self._read_indexed(st_index, read_safetensors_header)
        elif (p / "model.safetensors").is_file():
            self.tensors.update(read_safetensors_header(p / "model.safetensors"))
        elif sorted(p.glob("*.safetensors")):
            for shard in sorted(p.glob("*.safetensors")):
                if not shard.name.startswith("adapter_"):
                    self._add(shard, read_safetensors_header(shard))
        elif (p / "pytorch_model.bin.index.json").is_file():
            self._read_indexed(p / "pytorch_model.bin.index.json", self._index_torch_file)
        elif (p / "pytorch_model.bin").is_file():
            self._add(p / "pytorch_model.bin", self._index_torch_file(p / "pytorch_model.bin"))
        if not self.tensors:
            raise ForgeError(
                f"{p}: no weights found (expected model.safetensors, model-*.safetensors with "
                "model.safetensors.index.json, or pytorch_model*.bin)"
            )

    def _add(self, file: Path, refs: dict[str, TensorRef]) -> None:
        for name, ref in refs.items():
            if name in self.tensors:
                raise ForgeError(f"{file}: tensor {name} is also in {self.tensors[name].file.name}; "
                                 "a tensor must be stored once")
            self.tensors[name] = ref

    def _read_indexed(self, index: Path, read: Callable[[Path], dict[str, TensorRef]]) -> None:
        """Every shard the index names, each read once; the index's placement of each tensor must hold."""
        weight_map = _weight_map(index)
        for fname in dict.fromkeys(weight_map.values()):
            shard = self._shard_path(index, fname)
            if not shard.is_file():
                first = next(k for k, v in weight_map.items() if v == fname)
                raise ForgeError(
                    f"{shard}: missing, but {index.name} places tensor {first} in it; "
                    "download the complete checkpoint"
                )
            self._add(shard, read(shard))
        for name, fname in weight_map.items():
            ref = self.tensors.get(name)
            if ref is None or ref.file != self.path / fname:
                raise ForgeError(f"{index}: places tensor {name} in {fname}, which does not hold it; "
                                 "the index does not match the shards")

    def _shard_path(self, index: Path, fname: str) -> Path:
        """``fname`` from an index, refused unless it names a file inside the model folder.

        A shard may be a symbolic link into the same Hugging Face cache repository's ``blobs`` folder (how the hub
        cache stores every file); any other link out of the folder, an absolute name or ``..`` is refused.
        """
        rel = PurePosixPath(fname)
        if not fname or rel.is_absolute() or ".." in rel.parts or "\\" in fname:
            raise ForgeError(f"{index}: weight_map names {fname!r}, which is not a file name inside the model folder")
        shard = self.path / rel
        real, root = shard.resolve(), self.path.resolve()
        hub_blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
        if real.is_relative_to(root) or (hub_blobs is not None and real.is_relative_to(hub_blobs)):
            return shard
        raise ForgeError(f"{index}: weight_map names {fname!r}, a link to {real} outside the model folder; "
                         "refusing to read it")

    def _index_torch_file(self, path: Path) -> dict[str, TensorRef]:
        import torch  # only for .bin checkpoints

        sd = torch_load(path, mmap=True)
        names = {
            torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
            torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
        }
        self._torch_files[path] = sd
        refs = {}
        for name, t in sd.items():
            if t.dtype not in names:
                raise ForgeError(f"{path}: tensor {name} has unsupported dtype {t.dtype}")
            refs[name] = TensorRef(name, path, names[t.dtype], tuple(t.shape))
        return refs

    # -- reading -------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> Iterator[str]:
        """Tensor names in storage order (file, then byte offset), which makes reads sequential."""
        return iter(sorted(self.tensors, key=lambda n: (str(self.tensors[n].file), self.tensors[n].offset)))

    def read(self, name: str) -> np.ndarray:
        """Read one tensor into a fresh numpy array (BF16 as raw ``uint16``)."""
        ref = self.tensors[name]
        if ref.file in self._torch_files:
            return _torch_to_numpy(self._torch_files[ref.file][name])
        return read_tensor(ref)

    def iter_rows(self, name: str, slab_bytes: int) -> Iterator[np.ndarray]:
        """Yield the tensor as consecutive slabs of whole rows, each about ``slab_bytes`` large."""
        ref = self.tensors[name]
        if ref.file in self._torch_files or len(ref.shape) < 2 or ref.nbytes <= slab_bytes:
            yield self.read(name)
            return
        dt = _ST_DTYPES[ref.dtype]
        row_shape = ref.shape[1:]
        row_bytes = ref.nbytes // ref.shape[0]
        step = max(1, slab_bytes // row_bytes)
        # the slab buffer is kept for the next tensor (a fresh one costs a page fault per 4 KiB page); it is taken
        # back only once the caller asked for the slab after the last (it holds no slab of this tensor then)
        spare = self.__dict__.setdefault("_spare", [])
        i = next((i for i, b in enumerate(spare) if b.nbytes >= step * row_bytes), None)
        raw = spare.pop(i) if i is not None else np.empty(step * row_bytes, dtype=np.uint8)
        buf = raw[:step * row_bytes].view(dt).reshape(step, *row_shape)
        with open(ref.file, "rb", buffering=0) as f:
            f.seek(ref.offset)
            for start in range(0, ref.shape[0], step):
                n = min(step, ref.shape[0] - start)
                view = memoryview(buf[:n].reshape(-1).view(np.uint8))
                got = 0
                while got < n * row_bytes:
                    k = f.readinto(view[got:])
                    if not k:
                        raise ForgeError(f"{ref.file}: file is truncated while reading tensor {name}")
                    got += k
                yield buf[:n]
        if len(spare) < 2 and raw.nbytes <= 256 << 20:
            spare.append(raw)

    def read_float32(self, name: str) -> np.ndarray:
        """Read one tensor as float32, whatever its stored float type."""
        return to_float32(self.read(name), self.tensors[name].dtype)


class NonFiniteError(ForgeError):
    """A tensor holds NaN or infinite values: a damaged checkpoint, or a merge that overflowed."""


#: exponent bits of the 16-bit float types (all set: infinity or NaN)
_EXPONENT = {"F16": 0x7C00, "BF16": 0x7F80}


def nonfinite_at(arr: np.ndarray, dtype: str) -> int | None:
    """Flat index of the first NaN or infinity in raw data of safetensors dtype ``dtype`` (BF16 as uint16 bits), or
    None. One vectorised pass over data already in memory (16-bit types by their exponent bits, no float copy)."""
    if arr.size == 0:
        return None
    mask = _EXPONENT.get(dtype)
    if mask is not None and arr.dtype.itemsize == 2:
        # fast path, two reductions and no temporary: a positive NaN/inf is in [mask, 0x7FFF] (as int16: the only
        # values >= mask), a negative one in [0x8000 | mask, 0xFFFF] (as uint16: the only values >= that)
        flat = arr.reshape(-1)
        if flat.view(np.uint16).max() < (0x8000 | mask) and flat.view(np.int16).max() < mask:
            return None
        bits = np.bitwise_and(arr.view(np.uint16), mask)
        return None if bits.max() != mask else int(np.flatnonzero(bits == mask)[0])
    if arr.dtype.kind != "f" or np.isfinite(arr).all():
        return None
    return int(np.flatnonzero(~np.isfinite(arr))[0])


def check_finite(arr: np.ndarray, dtype: str, name: str, first_row: int = 0) -> None:
    """Raise :class:`NonFiniteError` naming tensor ``name`` (and the row) if ``arr`` holds NaN or infinity;
    ``first_row`` is where this slab starts in the tensor."""
    at = nonfinite_at(arr, dtype)
    if at is None:
        return
    where = f"row {first_row + at // max(1, arr.size // arr.shape[0])}" if arr.ndim >= 2 else f"element {at}"
    raise NonFiniteError(f"tensor {name}: holds NaN or infinite values (first at {where}); the weights are damaged")


def read_tensor(ref: TensorRef) -> np.ndarray:
    """Read one safetensors tensor into a fresh array of its raw type (BF16 as uint16 bits)."""
    arr = np.empty(ref.shape, dtype=_ST_DTYPES[ref.dtype])
    buf = memoryview(arr.reshape(-1).view(np.uint8))
    with open(ref.file, "rb", buffering=0) as f:
        f.seek(ref.offset)
        got = 0
        while got < ref.nbytes:
            n = f.readinto(buf[got:])
            if not n:
                raise ForgeError(f"{ref.file}: file is truncated while reading tensor {ref.name}")
            got += n
    return arr


def row_slabs(arr: np.ndarray, slab_bytes: int) -> Iterator[np.ndarray]:
    """Consecutive views of whole rows of ``arr``, each about ``slab_bytes`` large."""
    if arr.ndim < 2 or arr.nbytes <= slab_bytes:
        yield arr
        return
    step = max(1, slab_bytes // (arr.nbytes // arr.shape[0]))
    for i in range(0, arr.shape[0], step):
        yield arr[i:i + step]


def to_float32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Convert raw tensor data of safetensors dtype ``dtype`` to float32."""
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if arr.dtype == np.float32:
        return arr
    return arr.astype(np.float32)


def bf16_from_f32(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (``numpy.uint16``) with round-to-nearest-even; NaN stays NaN."""
    if "torch" in sys.modules:  # already loaded (LoRA merging): its conversion is the same rounding, threaded
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).copy()
    return t.numpy().copy()


def _weight_map(index: Path) -> dict[str, str]:
    """An index file's ``weight_map``: tensor name -> shard file name, checked to be that."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ForgeError(f"{index}: weight_map must be a non-empty object mapping tensor names to shard files, "
                         f"got {type(weight_map).__name__}")
    for name, fname in weight_map.items():
        if not isinstance(fname, str):
            raise ForgeError(f"{index}: weight_map gives {fname!r} for tensor {name}; expected a file name")
    return weight_map


def torch_load(path: Path, mmap: bool = False) -> dict:
    """A ``.bin`` checkpoint through ``torch.load(weights_only=True)``: a dictionary of named tensors, or a
    one-line ForgeError (a pickle that would run code is refused by torch's safe loader and never runs)."""
    import torch

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not the user's business
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as e:  # torch raises many types for bad pickles
        raise ForgeError(f"{path}: not a plain tensor checkpoint, refused by torch's safe loader "
                         f"({_torch_reason(e)}); nothing in it was run") from None
    if not isinstance(sd, dict):
        raise ForgeError(f"{path}: holds a {type(sd).__name__}, not a dictionary of named tensors")
    for name, t in sd.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise ForgeError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor; expected a dictionary "
                             "of named tensors")
    return sd


def _torch_reason(e: Exception) -> str:
    """The line of a torch.load error that says what was wrong (not torch's advice on how to load it unsafely)."""
    advice = ("weights_only", "Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [x.strip() for x in str(e).splitlines() if x.strip() and not any(a in x for a in advice)]
    text = lines[0] if lines else type(e).__name__
    return text.split(". ")[0].rstrip(".")[:200]
