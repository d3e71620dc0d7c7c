"""Importance-matrix files in llama.cpp's two formats.

- GGUF (llama.cpp's default today): ``general.type = "imatrix"``, ``imatrix.datasets`` (strings),
  ``imatrix.chunk_count``, ``imatrix.chunk_size``; per weight two F32 tensors ``<name>.in_sum2`` with
  ne = [n_cols, n_mat] (sum over tokens of x_j^2) and ``<name>.counts`` with ne = [1, n_mat] (tokens seen);
  tensors sorted by name.
- legacy ``.dat``: int32 n_entries; per entry int32 len, name, int32 ncall, int32 nval, float[nval] holding
  mean * ncall; then int32 last_chunk, int32 len, dataset name.

:class:`IMatrix` holds the sums and counts; :meth:`IMatrix.means` is what the quantizer wants.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .. import keys
from ..errors import ForgeError
from ..files import atomic_path, gguf_field, open_gguf


@dataclass
class IMatrix:
    """Per weight tensor: ``in_sum2`` (n_mat, n_cols) float64 and ``counts`` (n_mat,) float64."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 512

    def means(self) -> dict[str, np.ndarray]:
        """Per-column mean of squared activations, flattened over experts (llama.cpp's quantizer input)."""
        out = {}
        for name, s in self.sums.items():
            c = self.counts[name]
            m = np.where(c[:, None] > 0, s / np.maximum(c[:, None], 1), 1.0)
            out[name] = m.astype(np.float32).reshape(-1)
        return out


def write_gguf(im: IMatrix, path: str | os.PathLike[str]) -> None:
    """Write ``im`` as a GGUF imatrix (atomically)."""
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, arch="imatrix")
        try:
            w.kv_data[0].pop(keys.GENERAL.ARCHITECTURE, None)
            w.add_type("imatrix")
            w.add_array(keys.IMatrix.DATASETS, list(im.datasets) or ["unknown"])
            w.add_uint32(keys.IMatrix.CHUNK_COUNT, int(im.chunk_count))
            w.add_uint32(keys.IMatrix.CHUNK_SIZE, int(im.chunk_size))
            for name in sorted(im.sums):
                w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(im.sums[name], dtype=np.float32))
                w.add_tensor(f"{name}.counts",
                             np.ascontiguousarray(im.counts[name], dtype=np.float32).reshape(-1, 1))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()


def write_legacy(im: IMatrix, path: str | os.PathLike[str]) -> None:
    """Write ``im`` in llama.cpp's legacy ``.dat`` layout (for tools that only read that)."""
    out = bytearray(struct.pack("<i", len(im.sums)))
    for name in sorted(im.sums):
        s, c = im.sums[name], im.counts[name]
        ncall = max(1, int(-(-c.max() // im.chunk_size)))
        mean = np.where(c[:, None] > 0, s / np.maximum(c[:, None], 1), 1.0).reshape(-1)
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, mean.size)
        out += (mean * ncall).astype("<f4").tobytes()
    ds = (im.datasets[-1] if im.datasets else "").encode()
    out += struct.pack("<ii", int(im.chunk_count), len(ds)) + ds
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(out))


def read_imatrix(path: str | os.PathLike[str], chunk_size: int = 512) -> IMatrix:
    """Read a GGUF or legacy ``.dat`` imatrix (legacy counts become ncall * ``chunk_size`` tokens)."""
    path = Path(path)
    try:
        head = path.read_bytes()[:4]
    except OSError as e:
        raise ForgeError(f"--imatrix {path}: cannot read ({e.strerror})") from None
    return _read_gguf(path) if head == b"GGUF" else _read_legacy(path, chunk_size)


def _read_gguf(path: Path) -> IMatrix:
    try:
        r = open_gguf(path)
    except ForgeError as e:
        raise e.from_option("--imatrix") from None
    kind = gguf_field(r, keys.GENERAL.TYPE)
    if kind != "imatrix":
        raise ForgeError(f"--imatrix {path}: a GGUF, but not an imatrix (general.type is {kind!r})")
    im = IMatrix(datasets=gguf_field(r, keys.IMatrix.DATASETS) or [],
                 chunk_count=int(gguf_field(r, keys.IMatrix.CHUNK_COUNT) or 0),
                 chunk_size=int(gguf_field(r, keys.IMatrix.CHUNK_SIZE) or 512))
    tensors = {t.name: t for t in r.tensors}
    for tname, t in tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname[: -len(".in_sum2")]
        counts = tensors.get(name + ".counts")
        if counts is None:
            raise ForgeError(f"--imatrix {path}: {tname} has no {name}.counts")
        n_cols = int(t.shape[0])
        im.sums[name] = np.asarray(t.data, dtype=np.float64).reshape(-1, n_cols)
        im.counts[name] = np.asarray(counts.data, dtype=np.float64).reshape(-1)
    return im


def _read_legacy(path: Path, chunk_size: int) -> IMatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ForgeError(f"--imatrix {path}: truncated or not an imatrix file")
        vals = struct.unpack_from(fmt, data, pos)
        pos += size
        return vals

    (n,) = take("<i")
    if n < 0 or n > 1_000_000:
        raise ForgeError(f"--imatrix {path}: not an imatrix file (GGUF or llama.cpp legacy .dat)")
    im = IMatrix(chunk_size=chunk_size)
    for _ in range(n):
        (ln,) = take("<i")
        if ln <= 0 or ln > 4096:
            raise ForgeError(f"--imatrix {path}: corrupt entry name length {ln}")
        name = data[pos:pos + ln].decode("utf-8", errors="replace")
        pos += ln
        ncall, nval = take("<ii")
        if pos + 4 * nval > len(data):
            raise ForgeError(f"--imatrix {path}: truncated in entry {name}")
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float64)
        pos += 4 * nval
        im.sums[name] = (vals / max(ncall, 1) * ncall * chunk_size).reshape(1, -1)
        im.counts[name] = np.array([float(ncall * chunk_size)])
    if pos + 8 <= len(data):
        (im.chunk_count,) = take("<i")
        (ln,) = take("<i")
        im.datasets = [data[pos:pos + ln].decode("utf-8", errors="replace")]
    return im
