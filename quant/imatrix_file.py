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
    datasets = gguf_field(r, keys.IMatrix.DATASETS) or []
    datasets = [datasets] if isinstance(datasets, str) else datasets
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise ForgeError(f"--imatrix {path}: {keys.IMatrix.DATASETS} is not a list of strings")
    im = IMatrix(datasets=datasets, chunk_count=_count_field(path, r, keys.IMatrix.CHUNK_COUNT, 0),
                 chunk_size=_count_field(path, r, keys.IMatrix.CHUNK_SIZE, 512))
    tensors = {t.name: t for t in r.tensors}
    for tname, t in tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname[: -len(".in_sum2")]
        counts = tensors.get(name + ".counts")
        if counts is None:
            raise ForgeError(f"--imatrix {path}: {tname} has no {name}.counts")
        n_cols = int(t.shape[0])
        sums = np.asarray(t.data, dtype=np.float64)
        im.counts[name] = np.asarray(counts.data, dtype=np.float64).reshape(-1)
        if n_cols < 1 or sums.size != n_cols * im.counts[name].size:
            raise ForgeError(f"--imatrix {path}: {tname} holds {sums.size} values, not {n_cols} per count of "
                             f"{name}.counts ({im.counts[name].size}); a broken imatrix")
        im.sums[name] = sums.reshape(-1, n_cols)
        _check_values(path, name, im.sums[name], im.counts[name])
    return im


def _count_field(path: Path, reader: gguf.GGUFReader, key: str, default: int) -> int:
    """A non-negative integer field of a GGUF imatrix (``default`` when absent)."""
    value = gguf_field(reader, key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ForgeError(f"--imatrix {path}: {key} is {value!r}; expected a count (a non-negative integer)")
    return value


def _check_values(path: Path, name: str, sums: np.ndarray, counts: np.ndarray) -> None:
    """Sums of squares and token counts are finite and never negative."""
    for what, values in (("sums", sums), ("counts", counts)):
        if not np.isfinite(values).all() or (values < 0).any():
            raise ForgeError(f"--imatrix {path}: entry {name} has negative or non-finite {what}; a broken imatrix")


class _Legacy:
    """A cursor over a legacy ``.dat`` file: every read checked against the bytes left."""

    def __init__(self, path: Path) -> None:
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def ints(self, n: int, what: str) -> tuple[int, ...]:
        if 4 * n > self.left:
            raise ForgeError(f"--imatrix {self.path}: truncated or not an imatrix file (it ends inside {what})")
        vals = struct.unpack_from(f"<{n}i", self.data, self.pos)
        self.pos += 4 * n
        return vals

    def text(self, n: int) -> str:
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")


#: the least bytes one legacy entry takes: name length, a 1-byte name, ncall, nval, one value
_LEGACY_ENTRY = 4 + 1 + 8 + 4


def _read_legacy(path: Path, chunk_size: int) -> IMatrix:
    f = _Legacy(path)
    (n,) = f.ints(1, "the entry count")
    if n < 0 or n * _LEGACY_ENTRY > f.left:
        raise ForgeError(f"--imatrix {path}: not an imatrix file (GGUF or llama.cpp legacy .dat): it would hold "
                         f"{n} entries in {len(f.data)} bytes")
    im = IMatrix(chunk_size=chunk_size)
    for k in range(n):
        (ln,) = f.ints(1, f"entry {k + 1}")
        if ln <= 0 or ln > min(4096, f.left):
            raise ForgeError(f"--imatrix {path}: corrupt entry name length {ln}")
        name = f.text(ln)
        ncall, nval = f.ints(2, f"entry {name}")
        if ncall < 0:
            raise ForgeError(f"--imatrix {path}: entry {name} has a negative call count ({ncall}); a broken imatrix")
        if nval <= 0 or 4 * nval > f.left:
            raise ForgeError(f"--imatrix {path}: entry {name} claims {nval} values, and {f.left // 4} are left in "
                             "the file; truncated or broken")
        if name in im.sums:
            raise ForgeError(f"--imatrix {path}: entry {name} appears twice; a broken imatrix")
        vals = np.frombuffer(f.data, dtype="<f4", count=nval, offset=f.pos).astype(np.float64)
        f.pos += 4 * nval
        im.sums[name] = (vals / max(ncall, 1) * ncall * chunk_size).reshape(1, -1)
        im.counts[name] = np.array([float(ncall * chunk_size)])
        _check_values(path, name, im.sums[name], im.counts[name])
    if f.left >= 8:
        chunk_count, ln = f.ints(2, "the dataset name")
        if chunk_count < 0 or not 0 <= ln <= f.left:
            raise ForgeError(f"--imatrix {path}: corrupt trailer (chunk count {chunk_count}, dataset name length "
                             f"{ln}); a broken imatrix")
        im.chunk_count = chunk_count
        im.datasets = [f.text(ln)]
    return im
