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


def moe_gguf(dense: Path, out: Path, n_expert: int = 8, n_used: int = 2, n_ff_exp: int = 32, seed: int = 0) -> Path:
    """A tiny Qwen3-MoE GGUF (``qwen3moe``: router + 3-D expert tensors, llama.cpp runs them with MUL_MAT_ID),
    written with the ``gguf`` package from a dense ``qwen3`` GGUF: its metadata, tokenizer, embeddings and
    attention kept, each block's FFN replaced by ``n_expert`` random experts (``n_used`` per token)."""
    import gguf

    r = gguf.GGUFReader(dense)
    arch = r.fields["general.architecture"].contents()
    assert arch == "qwen3", arch
    w = gguf.GGUFWriter(out, arch="qwen3moe")
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        name = "qwen3moe." + key[len("qwen3."):] if key.startswith("qwen3.") else key
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    rng = np.random.default_rng(seed)
    n_embd = int(r.fields["qwen3.embedding_length"].contents())
    for t in r.tensors:
        if ".ffn_gate." in t.name or ".ffn_up." in t.name or ".ffn_down." in t.name:
            continue
        data = np.asarray(t.data).reshape([int(x) for x in reversed(t.shape)])
        w.add_tensor(t.name, np.ascontiguousarray(data, dtype=np.float32))
        if t.name.endswith(".ffn_norm.weight"):
            blk = t.name.rsplit(".ffn_norm", 1)[0]
            w.add_tensor(f"{blk}.ffn_gate_inp.weight", rng.standard_normal((n_expert, n_embd), dtype=np.float32))
            for kind, shape in (("gate", (n_expert, n_ff_exp, n_embd)), ("up", (n_expert, n_ff_exp, n_embd)),
                                ("down", (n_expert, n_embd, n_ff_exp))):
                w.add_tensor(f"{blk}.ffn_{kind}_exps.weight",
                             (0.3 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def check_moe(im: IMatrix, n_expert: int, n_used: int, n_tokens: int) -> list[str]:
    """llama-imatrix's per-expert bookkeeping, checked from its own invariants on every MoE block of ``im``:
    a row of sums and a count per expert; each (token, selected expert) pair counted once (the counts add up to
    n_used x tokens); gate and up experts see the same inputs as the router, so over all experts their sums are
    n_used x the router's; the down experts were routed the same. Returns the blocks checked."""
    blocks = sorted(n.rsplit(".ffn_gate_inp", 1)[0] for n in im.sums if n.endswith(".ffn_gate_inp.weight"))
    for blk in blocks:
        router = im.sums[f"{blk}.ffn_gate_inp.weight"]
        gate, up, down = (f"{blk}.ffn_{k}_exps.weight" for k in ("gate", "up", "down"))
        assert im.counts[f"{blk}.ffn_gate_inp.weight"].tolist() == [n_tokens]
        assert im.sums[gate].shape[0] == n_expert and im.counts[gate].shape == (n_expert,)
        assert im.counts[gate].sum() == n_used * n_tokens, (blk, im.counts[gate])
        assert (im.counts[gate] > 0).sum() >= 2, (blk, im.counts[gate])  # the routing really spreads
        assert np.array_equal(im.counts[gate], im.counts[up]) and np.array_equal(im.counts[gate], im.counts[down])
        np.testing.assert_allclose(im.sums[gate], im.sums[up], rtol=1e-6)
        np.testing.assert_allclose(im.sums[gate].sum(axis=0), n_used * router[0], rtol=1e-4)
        unused = im.counts[down] == 0
        assert (im.sums[down][unused] == 0).all() and (im.sums[down][~unused].max(axis=1) > 0).all()
    return blocks
