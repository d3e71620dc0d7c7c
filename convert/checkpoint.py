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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ForgeError

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


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse one ``.safetensors`` file's header; validate that the data it announces is there."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ForgeError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 1024 * 1024):
                raise ForgeError(f"{path}: not a safetensors file or truncated (header of {n} bytes announced)")
            raw = f.read(n)
    except OSError as e:
        raise ForgeError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ForgeError(f"{path}: corrupt safetensors header") from None
    base = 8 + n
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info.get("dtype")
        if dt not in _ST_DTYPES:
            raise ForgeError(f"{path}: tensor {name} has unsupported dtype {dt}")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        ref = TensorRef(name, path, dt, shape, base + begin, end - begin)
        if ref.n_elements * _ST_DTYPES[dt].itemsize != ref.nbytes:
            raise ForgeError(f"{path}: tensor {name} has inconsistent size in the header")
        if base + end > size:
            raise ForgeError(
                f"{path}: file is truncated: tensor {name} ends at byte {base + end} "
                f"but the file has {size} bytes; download it again"
            )
        refs[name] = ref
    return refs


class Checkpoint:
    """A Hugging Face model directory: ``config.json`` plus safetensors or ``.bin`` weights."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ForgeError(f"{self.path}: not a directory")
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise ForgeError(f"{cfg_file}: missing; a Hugging Face model directory needs its config.json")
        try:
            self.config: dict = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ForgeError(f"{cfg_file}: cannot be parsed ({e})") from None
        self.tokenizer_path = self.path  # where the tokenizer files are (an adapter may bring its own)
        self.tensors: dict[str, TensorRef] = {}
        self._torch_files: dict[Path, dict] = {}
        self._find_weights()

    # -- discovery -----------------------------------------------------------------------
    def _find_weights(self) -> None:
        p = self.path
        st_index = p / "model.safetensors.index.json"
        if st_index.is_file():
            for shard in self._shards_from_index(st_index):
                self.tensors.update(read_safetensors_header(shard))
        elif (p / "model.safetensors").is_file():
            self.tensors.update(read_safetensors_header(p / "model.safetensors"))
        elif sorted(p.glob("*.safetensors")):
            for shard in sorted(p.glob("*.safetensors")):
                if shard.name.startswith("adapter_"):
                    continue
                self.tensors.update(read_safetensors_header(shard))
        elif (p / "pytorch_model.bin.index.json").is_file():
            for shard in self._shards_from_index(p / "pytorch_model.bin.index.json"):
                self._index_torch_file(shard)
        elif (p / "pytorch_model.bin").is_file():
            self._index_torch_file(p / "pytorch_model.bin")
        if not self.tensors:
            raise ForgeError(
                f"{p}: no weights found (expected model.safetensors, model-*.safetensors with "
                "model.safetensors.index.json, or pytorch_model*.bin)"
            )

    def _shards_from_index(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise ForgeError(f"{index}: cannot be parsed ({e})") from None
        shards: list[Path] = []
        for fname in dict.fromkeys(weight_map.values()):
            shard = self.path / fname
            if not shard.is_file():
                first = next(k for k, v in weight_map.items() if v == fname)
                raise ForgeError(
                    f"{shard}: missing, but {index.name} places tensor {first} in it; "
                    "download the complete checkpoint"
                )
            shards.append(shard)
        return shards

    def _index_torch_file(self, path: Path) -> None:
        import torch  # only for .bin checkpoints

        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many types for bad pickles
            raise ForgeError(f"{path}: cannot be loaded safely with torch.load(weights_only=True): {e}") from None
        names = {
            torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
            torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
        }
        self._torch_files[path] = sd
        for name, t in sd.items():
            if t.dtype not in names:
                raise ForgeError(f"{path}: tensor {name} has unsupported dtype {t.dtype}")
            self.tensors[name] = TensorRef(name, path, names[t.dtype], tuple(t.shape))

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
        buf = np.empty((step, *row_shape), dtype=dt)
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

    def read_float32(self, name: str) -> np.ndarray:
        """Read one tensor as float32, whatever its stored float type."""
        return to_float32(self.read(name), self.tensors[name].dtype)


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
