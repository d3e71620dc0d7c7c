"""Helpers for the imatrix engine tests: compare two importance matrices, and build a tiny MoE GGUF.

``engines_agree(model_dir)`` is what a new model family (a MoE fixture, say) calls to show the llama engine
(llama.cpp's evaluation callback on a GGUF) gives the torch engine's sums and counts, tensor by tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gguf_forge.quant import IMatrix, compute_imatrix


def differences(new: IMatrix, ref: IMatrix) -> dict[str, float]:
    """Per tensor: the largest |new - ref| of the sums relative to the tensor's largest reference sum. Counts must
    be equal and the names the same (an AssertionError says which differ)."""
    assert set(new.sums) == set(ref.sums), sorted(set(new.sums) ^ set(ref.sums))
    out = {}
    for name, ref_sums in ref.sums.items():
        assert new.sums[name].shape == ref_sums.shape, (name, new.sums[name].shape, ref_sums.shape)
        assert np.array_equal(new.counts[name], ref.counts[name]), (name, new.counts[name], ref.counts[name])
        scale = max(float(np.abs(ref_sums).max()), 1e-30)
        out[name] = float(np.abs(new.sums[name] - ref_sums).max()) / scale
    return out


def engines_agree(model_dir: Path, loras=None, ctx: int = 64, chunks: int = 4, gguf_type: str = "f32",
                  tolerance: float = 2e-3, work_dir: Path | None = None) -> dict[str, float]:
    """Compute the imatrix of ``model_dir`` with both engines (the llama one on a temporary ``gguf_type`` GGUF) and
    assert they agree: the same tensors, equal counts, sums within ``tolerance`` (relative to each tensor's
    largest sum). Returns the per-tensor differences."""
    ref, _ = compute_imatrix(model_dir, ctx=ctx, chunks=chunks, engine="torch", loras=loras, progress=False)
    new, stats = compute_imatrix(model_dir, ctx=ctx, chunks=chunks, engine="llama", loras=loras, progress=False,
                                 gguf_type=gguf_type, work_dir=work_dir)
    assert stats["engine"] == "llama"
    diffs = differences(new, ref)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= tolerance, (worst, diffs[worst])
    return diffs
