"""Benchmark the fused LoRA merge: `convert --lora` against `convert` alone on the same base.

    python bench/merge.py            # SmolLM2 fixture (+ peft merge_and_unload/save_pretrained reference)
                                     # and the Llama-3-8B-shaped checkpoint with a rank-128 all-linear adapter
    python bench/merge.py --no-8b

Every run is a child process whose peak RSS comes from the kernel (wait4); all figures are measured in the
same run. The 8B-shaped base comes from bench/convert.py (generated once, ~16 GB); its adapter (random bf16,
rank 128 on q/k/v/o/gate/up/down of all 32 layers) is generated once beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("GGUF_FORGE_CACHE", str(ROOT / ".cache"))

from convert import drop_caches, run_measured, synthetic_8b  # noqa: E402  (bench/convert.py)

PEFT_REFERENCE = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
merged.save_pretrained(out)
"""


def synthetic_adapter(base: Path, dest: Path, rank: int = 128) -> Path:
    """Random bf16 rank-``rank`` LoRA on every linear layer of the 8B-shaped base."""
    if (dest / ".complete").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((base / "config.json").read_text())
    h, ff, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"] * 128
    dims = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (h, ff), "mlp.up_proj": (h, ff), "mlp.down_proj": (ff, h)}
    tensors = []
    for layer in range(cfg["num_hidden_layers"]):
        for mod, (n_in, n_out) in dims.items():
            p = f"base_model.model.model.layers.{layer}.{mod}"
            tensors += [(p + ".lora_A.weight", (rank, n_in)), (p + ".lora_B.weight", (n_out, rank))]
    header, off = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * ((-len(raw)) % 8)
    rng = np.random.default_rng(1)
    with open(dest / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors:
            x = (rng.standard_normal(shape, dtype=np.float32) * 0.01).view(np.uint32)
            f.write(((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16).tobytes())
    (dest / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(dims),
        "base_model_name_or_path": base.name, "use_rslora": False, "use_dora": False,
    }, indent=2))
    (dest / ".complete").write_text("ok\n")
    return dest


def quantize(*args: str) -> list[str]:
    return [sys.executable, "-m", "gguf_forge.tools.cli", *args, "--no-progress"]


def bench(label: str, base: Path, adapter: Path, out_dir: Path, peft: bool) -> list[dict]:
    rows = []
    out = out_dir / f"{label}.gguf"

    def measure(tool: str, cmd: list[str]) -> None:
        drop_caches()
        dt, rss, rc = run_measured(cmd)
        rows.append(dict(model=label, tool=tool, seconds=dt, rss=rss, ok=rc == 0))

    measure("convert (bf16)", quantize("convert", str(base), "-o", str(out), "--outtype", "bf16"))
    out.unlink(missing_ok=True)
    measure("convert --lora (bf16)", quantize("convert", str(base), "--lora", str(adapter), "-o", str(out),
                                              "--outtype", "bf16"))
    out.unlink(missing_ok=True)
    if peft:
        merged = out_dir / f"{label}-peft-merged"
        import shutil

        shutil.rmtree(merged, ignore_errors=True)
        measure("peft merge_and_unload + save_pretrained", [sys.executable, "-c", PEFT_REFERENCE, str(base),
                                                             str(adapter), str(merged)])
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (base / f).is_file():
                shutil.copy(base / f, merged / f)
        measure("  then quantize convert (bf16)", quantize("convert", str(merged), "-o", str(out), "--outtype", "bf16"))
        out.unlink(missing_ok=True)
        shutil.rmtree(merged, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-8b", action="store_true")
    ap.add_argument("--no-smollm2", action="store_true", help="only the 8B shape (no identity LoRA training)")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench-out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import adapters
    import fixtures

    rows = [] if args.no_smollm2 else bench("smollm2+identity-r16", fixtures.smollm2(), adapters.identity_lora(),
                                            args.out, peft=True)
    if not args.no_8b:
        cache = Path(os.environ["GGUF_FORGE_CACHE"]) / "bench"
        tok_src = fixtures.llama3() if fixtures.LLAMA3_TIKTOKEN.is_file() else fixtures.smollm2()
        base = synthetic_8b(cache / "llama3-8b-shape", tok_src)
        t = time.perf_counter()
        adapter = synthetic_adapter(base, cache / "llama3-8b-shape-lora-r128")
        print(f"rank-128 adapter ready ({time.perf_counter() - t:.0f} s)")
        rows += bench("llama3-8b-shape+r128", base, adapter, args.out, peft=False)
    print(f"\n{'model':<22} {'tool':<42} {'seconds':>8} {'peak RSS':>10}")
    for r in rows:
        print(f"{r['model']:<22} {r['tool']:<42} {r['seconds']:>8.1f} {r['rss'] / 2**30:>8.2f} GiB"
              + ("" if r["ok"] else "  FAILED"))
    for label in dict.fromkeys(r["model"] for r in rows):
        by = {r["tool"]: r for r in rows if r["model"] == label}
        alone, fused = by["convert (bf16)"], by["convert --lora (bf16)"]
        line = f"{label}: convert --lora takes {fused['seconds'] / alone['seconds']:.2f}x convert alone " \
               f"(target <= 1.3x), peak RSS {fused['rss'] / 2**30:.2f} GiB"
        if "peft merge_and_unload + save_pretrained" in by:
            p = by["peft merge_and_unload + save_pretrained"]
            c = by["  then quantize convert (bf16)"]
            line += f"; peft merge+save+convert {p['seconds'] + c['seconds']:.1f} s, {p['rss'] / 2**30:.2f} GiB"
        print(line)


if __name__ == "__main__":
    main()
