"""Write a (merged) checkpoint back out as a sharded safetensors Hugging Face directory, streaming.

Used by ``quantize merge``: each shard's header is computed from the tensor shapes first, then tensor
data is written slab by slab. The directory is assembled under a temporary name beside the target and
renamed when complete; config, tokenizer, chat template and generation config are copied.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ForgeError
from ..files import atomic_path
from .checkpoint import NonFiniteError, bf16_from_f32, check_finite, nonfinite_at, to_float32

DTYPES = {"f32": ("F32", np.float32), "f16": ("F16", np.float16), "bf16": ("BF16", np.uint16)}
_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
         "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json",
         "merges.txt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                    "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def _encode(slab: np.ndarray, src: str, dtype: str) -> np.ndarray:
    if dtype == "bf16" and src == "BF16":
        return slab
    if dtype == "f16" and src == "F16":
        return slab
    f32 = to_float32(slab, src)
    if dtype == "f32":
        return np.ascontiguousarray(f32, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow and NaN are checked for (or allowed) by the caller
        return f32.astype(np.float16) if dtype == "f16" else bf16_from_f32(f32)


def write_hf_checkpoint(source, out_dir: Path, dtype: str = "auto", max_shard_bytes: int = 5 * 10**9,
                        progress: Callable[[int | None], object] | None = None,
                        allow_nonfinite: bool = False) -> list[Path]:
    """Write ``source`` (a Checkpoint or MergedCheckpoint) to ``out_dir``; returns the weight files.

    ``progress(n)`` is told the number of weights written after each slab, and ``progress(None)`` at the end.
    A tensor holding NaN or infinity is a :class:`~.checkpoint.NonFiniteError` unless ``allow_nonfinite``.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    base = getattr(source, "base", source)
    dtype = _resolve_dtype(dtype, base)
    names = list(source.names())
    if getattr(source, "config", {}).get("tie_word_embeddings") and "lm_head.weight" in names:
        names.remove("lm_head.weight")
    itemsize = np.dtype(DTYPES[dtype][1]).itemsize
    shards = _plan_shards(source, names, itemsize, max_shard_bytes)
    files: list[Path] = []
    try:
        with atomic_path(out_dir, directory=True) as tmp:
            weight_map: dict[str, str] = {}
            total = 0
            for i, shard in enumerate(shards):
                fname = ("model.safetensors" if len(shards) == 1
                         else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
                total += _write_shard(tmp / fname, source, shard, dtype, progress, allow_nonfinite)
                weight_map.update(dict.fromkeys(shard, fname))
                files.append(out_dir / fname)
            if len(shards) > 1:
                (tmp / "model.safetensors.index.json").write_text(
                    json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
            _copy_side_files(source, base, tmp, dtype)
    finally:
        if progress:
            progress(None)
    return files


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ForgeError(f"{out_dir}: exists and is not empty; remove it or choose another output folder")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ForgeError(f"{out_dir}: folder {parent} does not exist or is not writable")


def _resolve_dtype(dtype: str, base) -> str:
    """``auto`` -> the checkpoint's most common float type (bf16, f16, else f32)."""
    if dtype == "auto":
        floats = [r.dtype for r in base.tensors.values()]
        top = max(set(floats), key=floats.count)
        dtype = {"BF16": "bf16", "F16": "f16"}.get(top, "f32")
    if dtype not in DTYPES:
        raise ForgeError(f"weight dtype {dtype}: choose one of auto, {', '.join(DTYPES)}")
    return dtype


def _plan_shards(source, names: list[str], itemsize: int, max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most ``max_shard_bytes`` (a larger tensor gets a shard alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for n in names:
        nbytes = int(np.prod(source.tensors[n].shape)) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += nbytes
    return shards


def _write_shard(path: Path, source, shard: list[str], dtype: str,
                 progress: Callable[[int | None], object] | None, allow_nonfinite: bool = False) -> int:
    """Write one safetensors file holding the tensors ``shard``, streamed slab by slab; returns its data size."""
    st_dtype, np_dtype = DTYPES[dtype]
    itemsize = np.dtype(np_dtype).itemsize
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for n in shard:
        shape = list(source.tensors[n].shape)
        nbytes = int(np.prod(shape)) * itemsize
        header[n] = {"dtype": st_dtype, "shape": shape, "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for n in shard:
            src_dtype = source.tensors[n].dtype
            row = 0
            for slab in source.iter_rows(n, 64 << 20):
                if not allow_nonfinite:
                    check_finite(slab, src_dtype, n, row)
                data = _encode(slab, src_dtype, dtype)
                if not allow_nonfinite and dtype == "f16" and src_dtype != "F16" \
                        and nonfinite_at(data, "F16") is not None:
                    raise NonFiniteError(f"tensor {n}: values beyond float16's range (65504) would be written as "
                                         f"infinity (from row {row}); write bf16 or f32 instead")
                row += slab.shape[0] if slab.ndim else 1
                f.write(memoryview(np.ascontiguousarray(data)).cast("B"))
                if progress:
                    progress(int(data.size))
        f.flush()
        os.fsync(f.fileno())
    return off


def _copy_side_files(source, base, folder: Path, dtype: str) -> None:
    """Tokenizer, chat template and generation config beside the weights; config.json with the new dtype."""
    tok_dir = Path(getattr(source, "tokenizer_path", base.path))
    for name in _COPY:
        src = (tok_dir if name in _TOKENIZER_FILES else base.path) / name
        if src.is_file():
            shutil.copy(src, folder / name)
    config = dict(getattr(source, "config", base.config))
    config["torch_dtype"] = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]
    config.pop("dtype", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
