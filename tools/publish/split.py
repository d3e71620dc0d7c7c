"""Split a GGUF into llama.cpp ``gguf-split`` shards, so hubs with a per-file size limit can hold it.

The shards follow llama.cpp's own scheme (``llama-gguf-split --split-max-size``): files named
``<stem>-00001-of-0000N.gguf``; the first carries all the source metadata, every shard carries
``split.no`` (u16, 0-based), ``split.count`` (u16) and ``split.tensors.count`` (i32), and tensors keep their
order and bytes. llama.cpp (and llama-cpp-python, LM Studio) load the model from the first shard and find the
others by name; ``llama-gguf-split --merge`` joins them back.

Tensors are copied one at a time from a memory map, so memory stays small; shards are written under hidden
temporary names in the target folder and renamed only when all of them are complete.

Why not gguf-py's own sharded writer (``GGUFWriter(split_max_size=)``): it writes the same names, split keys and
metadata layout, streams, and llama.cpp loads its shards, but like ``llama-gguf-split`` it counts only tensor bytes
against the limit, so a shard exceeds it by the metadata (a 190 MB limit gave a 196.5 MB first shard for Gemma 3
270M), and it writes under the final names; a hub's per-file limit is hard, so we plan on whole-file sizes.

Public surface: :func:`plan_split` (sizes, no writing), :func:`split_gguf`, :class:`Shard`, :func:`shard_name`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from ...errors import ForgeError
from ...files import atomic_path, gguf_field, open_gguf
from ...files import progress as progress_bar
from ...keys import GENERAL, SPLIT

KV_SPLIT_NO = SPLIT.LLM_KV_SPLIT_NO
KV_SPLIT_COUNT = SPLIT.LLM_KV_SPLIT_COUNT
KV_SPLIT_TENSORS_COUNT = SPLIT.LLM_KV_SPLIT_TENSORS_COUNT
_SPLIT_KEYS = (KV_SPLIT_NO, KV_SPLIT_COUNT, KV_SPLIT_TENSORS_COUNT)
_HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, tensor count, kv count


def shard_name(stem: str, index: int, count: int) -> str:
    """llama.cpp's shard file name: ``shard_name("M-Q4_K_M", 0, 3) == "M-Q4_K_M-00001-of-00003.gguf"``."""
    return f"{stem}-{index + 1:05d}-of-{count:05d}.gguf"


@dataclass
class Shard:
    """One planned (or written) shard: its file name, exact size in bytes and the tensors it holds."""

    name: str
    bytes: int
    tensors: list[str] = field(default_factory=list)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _kv_entry_bytes(key: str, value_bytes: int) -> int:
    # key string (u64 length + utf-8) + u32 value type + value
    return 8 + len(key.encode()) + 4 + value_bytes


def _split_kv_bytes() -> int:
    return _kv_entry_bytes(KV_SPLIT_NO, 2) + _kv_entry_bytes(KV_SPLIT_COUNT, 2) + _kv_entry_bytes(
        KV_SPLIT_TENSORS_COUNT, 4)


def _open(path: Path) -> Any:
    reader = open_gguf(path)
    if (gguf_field(reader, KV_SPLIT_COUNT) or 0) > 1:
        raise ForgeError(f"{path}: already a shard of a split GGUF; publish the unsplit file instead")
    return reader


def _source_kv(reader: Any) -> list[Any]:
    """The source's own key/value fields (not the reader's GGUF.* header pseudo-fields, not split keys)."""
    return [f for f in reader.fields.values() if not f.name.startswith("GGUF.") and f.name not in _SPLIT_KEYS]


def _tensor_info_bytes(t: Any) -> int:
    # name string + u32 n_dims + u64 per dim + u32 type + u64 offset
    return 8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8


def _plan(reader: Any, stem: str, max_bytes: int, path: Path) -> list[Shard]:
    align = int(reader.alignment)
    kv_first = sum(sum(int(p.nbytes) for p in f.parts) for f in _source_kv(reader)) + _split_kv_bytes()
    if GENERAL.ARCHITECTURE not in reader.fields:  # the writer always adds it
        raise ForgeError(f"{path}: no {GENERAL.ARCHITECTURE} key; not a llama.cpp model GGUF")
    kv_rest = _split_kv_bytes()

    groups: list[list[Any]] = [[]]

    def size_of(group: list[Any], first: bool) -> int:
        meta = _HEADER_BYTES + (kv_first if first else kv_rest) + sum(_tensor_info_bytes(t) for t in group)
        return _pad(meta, align) + sum(_pad(int(t.n_bytes), align) for t in group)

    for t in reader.tensors:
        current = groups[-1]
        first = len(groups) == 1
        if current and size_of(current + [t], first) > max_bytes:
            groups.append([t])
            current, first = groups[-1], False
        else:
            current.append(t)
        if size_of(current, first) > max_bytes:
            raise ForgeError(
                f"{path}: tensor {t.name} ({int(t.n_bytes):,} bytes with its header) does not fit in one file of "
                f"{max_bytes:,} bytes; allow larger files")
    sizes = [size_of(g, i == 0) for i, g in enumerate(groups)]
    n = len(groups)
    return [Shard(shard_name(stem, i, n), sizes[i], [t.name for t in g]) for i, g in enumerate(groups)]


def plan_split(path: str | Path, max_bytes: int) -> list[Shard]:
    """The shards :func:`split_gguf` would write for ``path`` with files of at most ``max_bytes``, without
    writing anything. A file that already fits gives an empty list."""
    path = Path(path)
    if path.stat().st_size <= max_bytes:
        return []
    reader = _open(path)
    shards = _plan(reader, path.stem, max_bytes, path)
    return shards if len(shards) > 1 else []


def _field_value(f: Any) -> tuple[Any, Any, Any]:
    """(value, type, sub_type) of a reader field, strings kept as raw bytes so they copy byte for byte."""
    vt = gguf.GGUFValueType
    main = f.types[0]
    if main == vt.ARRAY:
        sub = f.types[-1]
        if len(f.types) > 2:
            raise ForgeError(f"metadata key {f.name}: nested arrays are not supported by the splitter")
        if sub == vt.STRING:
            return [bytes(f.parts[i]) for i in f.data], main, sub
        return [f.parts[i][0].item() for i in f.data], main, sub
    part = f.parts[f.data[0]]
    if main == vt.STRING:
        return bytes(part), main, None
    return part[0].item(), main, None


def split_gguf(path: str | Path, outdir: str | Path, max_bytes: int, *, progress: bool = True) -> list[Path]:
    """Split ``path`` into llama.cpp shards of at most ``max_bytes`` each, written into ``outdir``.

    Returns the shard paths in order (``<stem>-00001-of-0000N.gguf`` ...). All shards are written under hidden
    temporary names and renamed together at the end, so an interrupted run leaves no shard under a final name.
    A file that already fits is an error (there is nothing to split).
    """
    path, outdir = Path(path), Path(outdir)
    reader = _open(path)
    shards = _plan(reader, path.stem, max_bytes, path)
    if len(shards) < 2:
        raise ForgeError(f"{path}: already fits in {max_bytes:,} bytes; nothing to split")
    outdir.mkdir(parents=True, exist_ok=True)
    align = int(reader.alignment)
    finals = [outdir / s.name for s in shards]
    total = sum(_pad(int(t.n_bytes), align) for t in reader.tensors)
    with progress_bar(total, f"split {path.name}", enabled=progress) as bar, contextlib.ExitStack() as renames:
        for i, shard in enumerate(shards):
            tmp = renames.enter_context(atomic_path(finals[i]))  # renamed when every shard is written
            _write_shard(reader, tmp, i, shards, bar.update)
            written = tmp.stat().st_size
            if written != shard.bytes:  # the plan promised every shard fits; never upload a shard that does not
                raise ForgeError(f"{shard.name}: wrote {written:,} bytes, planned {shard.bytes:,}; please report this")
    return finals


def _write_shard(reader: Any, dest: Path, index: int, shards: list[Shard], progress: Any) -> None:
    """Write shard ``index`` of ``shards`` to ``dest``, copying its tensors one at a time from the memory map."""
    tensors = {t.name: t for t in reader.tensors}
    writer = gguf.GGUFWriter(dest, gguf_field(reader, GENERAL.ARCHITECTURE))
    writer.data_alignment = int(reader.alignment)
    if index == 0:
        for f in _source_kv(reader):
            if f.name != GENERAL.ARCHITECTURE:
                value, vtype, sub = _field_value(f)
                writer.add_key_value(f.name, value, vtype, sub_type=sub)
    else:  # like gguf-split: later shards carry only the split keys
        writer.kv_data[0].pop(GENERAL.ARCHITECTURE, None)
    writer.add_uint16(KV_SPLIT_NO, index)
    writer.add_uint16(KV_SPLIT_COUNT, len(shards))
    writer.add_int32(KV_SPLIT_TENSORS_COUNT, len(reader.tensors))
    names = shards[index].tensors
    for name in names:
        t = tensors[name]
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, int(t.data.nbytes), t.tensor_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name in names:
            writer.write_tensor_data(tensors[name].data)
            progress(_pad(int(tensors[name].n_bytes), writer.data_alignment))
    finally:
        writer.close()
