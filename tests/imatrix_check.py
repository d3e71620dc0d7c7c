"""Helpers for the imatrix engine tests: compare two importance matrices, and build a tiny MoE GGUF.

``engines_agree(model_dir)`` is what a new model family (a MoE fixture, say) calls to show the llama engine
(llama.cpp's evaluation callback on a GGUF) gives the torch engine's sums and counts, tensor by tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gguf_forge.quant import IMatrix, compute_imatrix


def differences(new: IMatrix, ref: IMatrix, max_flips: int = 0) -> dict[str, float]:
    """Per tensor: the largest |new - ref| of the sums relative to the tensor's largest reference sum. The names
    must be the same and the counts equal (an AssertionError says which differ).

    MoE experts (``*_exps``, one row per expert): the router's choice for a token whose two candidate experts
    score within rounding of each other may differ between engines (llama.cpp keeps K/V in float16); up to
    ``max_flips`` such (token, expert) choices per tensor are allowed. Each moves one count from one expert to
    another (the total stays n_used x tokens); the experts it touches are left out of the sums' comparison."""
    assert set(new.sums) == set(ref.sums), sorted(set(new.sums) ^ set(ref.sums))
    out = {}
    for name, ref_sums in ref.sums.items():
        assert new.sums[name].shape == ref_sums.shape, (name, new.sums[name].shape, ref_sums.shape)
        same = new.counts[name] == ref.counts[name]
        if "_exps." in name:
            assert new.counts[name].sum() == ref.counts[name].sum(), (name, new.counts[name], ref.counts[name])
            moved = np.abs(new.counts[name] - ref.counts[name]).sum() / 2
            assert moved <= max_flips, (name, new.counts[name], ref.counts[name])
        else:
            assert same.all(), (name, new.counts[name], ref.counts[name])
        scale = max(float(np.abs(ref_sums).max()), 1e-30)
        out[name] = float(np.abs(new.sums[name][same] - ref_sums[same]).max()) / scale
    return out


def as_llama_records(torch_im: IMatrix, llama_names) -> IMatrix:
    """The torch engine's statistic under the names llama.cpp records for the same matmuls.

    The torch engine keeps gate and up experts apart (``ffn_gate_exps`` / ``ffn_up_exps``, the same inputs); a
    GGUF whose experts are fused (Gemma 4: ``ffn_gate_up_exps``, one MUL_MAT_ID) has llama.cpp record one entry
    for both. Where ``llama_names`` holds the fused name, the two become that one entry (they must be equal:
    the same tokens' hidden states)."""
    llama_names = set(llama_names)
    out = IMatrix(sums=dict(torch_im.sums), counts=dict(torch_im.counts), datasets=torch_im.datasets,
                  chunk_count=torch_im.chunk_count, chunk_size=torch_im.chunk_size)
    for name in sorted(torch_im.sums):
        if not name.endswith(".ffn_gate_exps.weight"):
            continue
        fused = name.replace(".ffn_gate_exps.", ".ffn_gate_up_exps.")
        up = name.replace(".ffn_gate_exps.", ".ffn_up_exps.")
        if fused not in llama_names or name in llama_names or up not in out.sums:
            continue
        assert np.array_equal(out.counts[name], out.counts[up]), (name, out.counts[name], out.counts[up])
        np.testing.assert_allclose(out.sums[name], out.sums[up], rtol=1e-6)
        out.sums[fused], out.counts[fused] = out.sums.pop(name), out.counts.pop(name)
        del out.sums[up], out.counts[up]
    return out


def engines_agree(model_dir: Path, loras=None, ctx: int = 64, chunks: int = 4, gguf_type: str = "f32",
                  tolerance: float = 2e-3, work_dir: Path | None = None, max_flips: int = 4) -> dict[str, float]:
    """Compute the imatrix of ``model_dir`` with both engines (the llama one on a temporary ``gguf_type`` GGUF) and
    assert they agree: the same tensors, equal counts, sums within ``tolerance`` (relative to each tensor's
    largest sum). Names are compared as llama.cpp records them (:func:`as_llama_records`: fused gate/up experts).
    Returns the per-tensor differences."""
    ref, _ = compute_imatrix(model_dir, ctx=ctx, chunks=chunks, engine="torch", loras=loras, progress=False)
    new, stats = compute_imatrix(model_dir, ctx=ctx, chunks=chunks, engine="llama", loras=loras, progress=False,
                                 gguf_type=gguf_type, work_dir=work_dir)
    assert stats["engine"] == "llama"
    diffs = differences(new, as_llama_records(ref, new.sums), max_flips=max_flips)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= tolerance, (worst, diffs[worst])
    return diffs


def moe_gguf(dense: Path, out: Path, n_expert: int = 8, n_used: int = 2, n_ff_exp: int = 32, seed: int = 0,
             experts: dict[str, np.ndarray] | None = None) -> Path:
    """A tiny Qwen3-MoE GGUF (``qwen3moe``: router + 3-D expert tensors, llama.cpp runs them with MUL_MAT_ID),
    written with the ``gguf`` package from a dense ``qwen3`` GGUF: its metadata, tokenizer, embeddings and
    attention kept, each block's FFN replaced by ``n_expert`` experts (``n_used`` per token): random, or the
    ``experts`` given by GGUF name (numpy shapes: router (n_expert, n_embd), gate/up (n_expert, n_ff_exp, n_embd),
    down (n_expert, n_embd, n_ff_exp))."""
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
            shapes = (("gate_inp", (n_expert, n_embd)), ("gate_exps", (n_expert, n_ff_exp, n_embd)),
                      ("up_exps", (n_expert, n_ff_exp, n_embd)), ("down_exps", (n_expert, n_embd, n_ff_exp)))
            for kind, shape in shapes:
                name = f"{blk}.ffn_{kind}.weight"
                data = experts[name] if experts else (0.3 * rng.standard_normal(shape, dtype=np.float32))
                assert data.shape == shape, (name, data.shape, shape)
                w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
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


def moe_twins(dense_dir: Path, dense_gguf: Path, out: Path, n_expert: int = 8, n_used: int = 2, ff: int = 32,
              seed: int = 0):
    """(transformers Qwen3-MoE model, its GGUF): the same weights twice, made from a dense Qwen3 checkpoint and its
    GGUF (embeddings, attention and norms kept; random router and experts in both)."""
    import torch
    import transformers

    dense = transformers.AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
    keep = {k: v for k, v in dense.config.to_dict().items() if k not in ("architectures", "model_type", "dtype")}
    cfg = transformers.Qwen3MoeConfig(**{**keep, "num_experts": n_expert, "num_experts_per_tok": n_used,
                                         "moe_intermediate_size": ff, "norm_topk_prob": True,
                                         "decoder_sparse_step": 1, "mlp_only_layers": []})
    torch.manual_seed(seed)
    moe = transformers.Qwen3MoeForCausalLM(cfg).float().eval()
    missing, _ = moe.load_state_dict({k: v for k, v in dense.state_dict().items() if ".mlp." not in k},
                                     strict=False)
    assert all(".mlp." in k for k in missing), missing
    g = torch.Generator().manual_seed(seed)
    experts = {}
    with torch.no_grad():
        for i, layer in enumerate(moe.model.layers):
            mlp = layer.mlp
            mlp.gate.weight.copy_(torch.randn(mlp.gate.weight.shape, generator=g))
            mlp.experts.gate_up_proj.copy_(0.3 * torch.randn(mlp.experts.gate_up_proj.shape, generator=g))
            mlp.experts.down_proj.copy_(0.3 * torch.randn(mlp.experts.down_proj.shape, generator=g))
            gu = mlp.experts.gate_up_proj.numpy()
            experts.update({f"blk.{i}.ffn_gate_inp.weight": mlp.gate.weight.numpy().copy(),
                            f"blk.{i}.ffn_gate_exps.weight": gu[:, :ff].copy(),
                            f"blk.{i}.ffn_up_exps.weight": gu[:, ff:].copy(),
                            f"blk.{i}.ffn_down_exps.weight": mlp.experts.down_proj.numpy().copy()})
    return moe, moe_gguf(dense_gguf, out, n_expert, n_used, ff, experts=experts)
