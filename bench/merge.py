"""Benchmark the fused LoRA merge: `convert --lora` against `convert` alone on the same base.

    python bench/merge.py            # SmolLM2 fixture (+ peft merge_and_unload/save_pretrained reference)
                                     # and the Llama-3-8B-shaped checkpoint with a rank-128 all-linear adapter
    python bench/merge.py --no-8b
    python bench/merge.py --no-smollm2 --ram-disk /dev/shm/merge   # 8B shape (bf16 and f32 adapters) + RAM disk
    python bench/merge.py --no-8b --ram-disk /dev/shm/merge --ram-disk-repeat 9   # RAM disk only, 9 rounds

Every run is a child process whose peak RSS and CPU time (user + system) come from the kernel (wait4); all
figures are measured in the same run, with the page cache dropped before each. The 8B-shaped base comes from
bench/convert.py (generated once, ~16 GB); its adapters (random, rank 128 on q/k/v/o/gate/up/down of all 32
layers, one bf16, one f32 as peft saves by default) are generated once beside it. The output is BF16 (the merge
then runs in place in bf16 slabs, see convert/lora.py); the error of that path against the float32 merge is
measured on three tensors and printed. --ram-disk takes the disk out (the ratio's worst case: convert alone is
then pure CPU): a slice of the 8B shape (--ram-disk-layers, default 4, and a 49152-token vocabulary), its runs
interleaved (convert, lora bf16, lora f32, convert...) --ram-disk-repeat times, each tool's median reported with
every run's time (writing to a RAM disk here costs 1-8 s per 2.4 GB from run to run: the VM's host backs the
pages the guest freed on the next touch). Before the runs a child process measures this machine's rank-128 in-place
addmm_ throughput in bf16 and f32 (torch's default threads, all cores) and what importing torch costs; each
merge's GEMM lower bound (its multiply-adds / that throughput) is printed beside its ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("GGUF_FORGE_CACHE", str(ROOT / ".cache"))

from convert import drop_caches, synthetic_8b  # noqa: E402  (bench/convert.py)

PEFT_REFERENCE = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
merged.save_pretrained(out)
"""


def synthetic_adapter(base: Path, dest: Path, rank: int = 128, dtype: str = "BF16") -> Path:
    """Random rank-``rank`` LoRA (``dtype`` BF16 or F32, peft's default) on every linear layer of the 8B-shaped
    base."""
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
        n = int(np.prod(shape)) * (2 if dtype == "BF16" else 4)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * ((-len(raw)) % 8)
    rng = np.random.default_rng(1)
    with open(dest / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors:
            x = rng.standard_normal(shape, dtype=np.float32) * 0.01
            if dtype == "BF16":
                x = x.view(np.uint32)
                x = ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16)
            f.write(x.tobytes())
    (dest / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(dims),
        "base_model_name_or_path": base.name, "use_rslora": False, "use_dora": False,
    }, indent=2))
    (dest / ".complete").write_text("ok\n")
    return dest


def quantize(*args: str) -> list[str]:
    return [sys.executable, "-m", "gguf_forge.tools.cli", *args, "--no-progress"]


def run_cpu(cmd: list[str]) -> tuple[float, int, float, int]:
    """(wall seconds, peak RSS bytes, CPU seconds user + system, return code) of a child process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(err[-2000:], file=sys.stderr)
    return dt, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, rc


def bench(label: str, base: Path, adapters: dict[str, Path], out_dir: Path, peft: bool,
          drop: bool = True, repeat: int = 1) -> list[dict]:
    """``convert`` alone, then ``convert --lora`` with each adapter (tag -> folder), BF16 output, page cache dropped
    before each run (unless ``drop`` is false: a RAM disk); ``repeat`` rounds interleaved (convert, lora, lora,
    convert, lora, lora...), each tool's median kept (with its spread)."""
    rows = []
    out = out_dir / f"{label}.gguf"

    def measure(tool: str, cmd: list[str]) -> None:
        if drop:
            drop_caches()
        dt, rss, cpu, rc = run_cpu(cmd)
        rows.append(dict(model=label, tool=tool, seconds=dt, rss=rss, cpu=cpu, ok=rc == 0))
        out.unlink(missing_ok=True)

    for _ in range(repeat):
        measure("convert (bf16)", quantize("convert", str(base), "-o", str(out), "--outtype", "bf16"))
        for tag, adapter in adapters.items():
            measure(f"convert --lora {tag} (bf16)", quantize("convert", str(base), "--lora", str(adapter), "-o",
                                                              str(out), "--outtype", "bf16"))
    rows = _medians(rows)
    if peft:
        adapter = next(iter(adapters.values()))
        merged = out_dir / f"{label}-peft-merged"
        import shutil

        shutil.rmtree(merged, ignore_errors=True)
        measure("peft merge_and_unload + save_pretrained", [sys.executable, "-c", PEFT_REFERENCE, str(base),
                                                             str(adapter), str(merged)])
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (base / f).is_file():
                shutil.copy(base / f, merged / f)
        measure("  then quantize convert (bf16)", quantize("convert", str(merged), "-o", str(out), "--outtype", "bf16"))
        shutil.rmtree(merged, ignore_errors=True)
    return rows


def _medians(rows: list[dict]) -> list[dict]:
    """One row per tool: the median run's seconds and CPU seconds (each its own median), the largest peak RSS, all
    the runs' seconds (``runs``)."""
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["tool"], {**r, "runs": []})["runs"].append(r)
    for r in out.values():
        runs = r.pop("runs")
        r.update(seconds=float(np.median([x["seconds"] for x in runs])), cpu=float(np.median([x["cpu"] for x in runs])),
                 rss=max(x["rss"] for x in runs), ok=all(x["ok"] for x in runs), runs=[x["seconds"] for x in runs])
    return list(out.values())


GEMM_PROBE = """
import json, os, sys, time
t = time.perf_counter(); c = os.times()
import torch
imp = time.perf_counter() - t, (lambda e: e.user + e.system - c.user - c.system)(os.times())
out = {"threads": torch.get_num_threads(), "import_s": imp[0], "import_cpu_s": imp[1]}
for name, dt in (("bf16", torch.bfloat16), ("f32", torch.float32)):
    best = 0.0
    for rows, cols in ((4096, 4096), (14336, 4096)):  # q/o and gate/up slabs of the 8B shape, rank 128, in place
        w = torch.randn(rows, cols).to(dt); b = torch.randn(rows, 128).to(dt); a = torch.randn(128, cols).to(dt)
        for _ in range(3):
            w.addmm_(b, a, alpha=0.01)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < 1.0:
            w.addmm_(b, a, alpha=0.01); n += 1
        best = max(best, n * rows * cols * 128 / (time.perf_counter() - t))
    out[name] = best
print(json.dumps(out))
"""


def gemm_probe() -> dict:
    """This machine's in-place rank-128 ``addmm_`` throughput (multiply-adds per second) in bf16 and f32 with torch's
    default thread count (all cores), and the CPU cost of importing torch, measured in a child process."""
    got = subprocess.run([sys.executable, "-c", GEMM_PROBE], capture_output=True, text=True, check=True)
    return json.loads(got.stdout.strip().splitlines()[-1])


def adapter_macs(adapter: Path) -> int:
    """Multiply-adds of an adapter's delta products: rank x out x in per LoRA module (from the safetensors header)."""
    with open(adapter / "adapter_model.safetensors", "rb") as f:  # the header only (this process's peak RSS is
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))  # its children's starting point)
    total = 0
    for name, info in header.items():
        if name.endswith("lora_A.weight"):
            rank, n_in = info["shape"]
            n_out = header[name.replace("lora_A", "lora_B")]["shape"][0]
            total += rank * n_in * n_out
    return total


def merge_error(base: Path, adapter: Path, names: list[str]) -> str:
    """How far the BF16 output path (``MergedCheckpoint.write_bf16``) is from the float32 merge rounded to bf16,
    on ``names`` of ``base`` (in-process, not timed)."""
    import torch

    from gguf_forge.convert.checkpoint import Checkpoint
    from gguf_forge.convert.lora import LoraSpec, merged_source

    fast = merged_source(Checkpoint(base), [LoraSpec(str(adapter))])
    fast.write_bf16()
    exact = merged_source(Checkpoint(base), [LoraSpec(str(adapter))])
    off = total = worst_ulp = 0
    worst_rel = 0.0
    for name in names:
        got = np.concatenate([np.array(x, copy=True) for x in fast.iter_rows(name, 64 << 20)]).view(np.int16)
        ref32 = np.concatenate([np.array(x, copy=True) for x in exact.iter_rows(name, 64 << 20)])
        want = torch.from_numpy(ref32).to(torch.bfloat16).view(torch.int16).numpy()
        diff = got != want
        off += int(diff.sum())
        total += diff.size
        if diff.any():
            same_sign = diff & ((got < 0) == (want < 0))
            if same_sign.any():
                worst_ulp = max(worst_ulp, int(np.abs(got[same_sign].astype(np.int32) - want[same_sign]).max()))
            g, w = (torch.from_numpy(x[diff]).view(torch.bfloat16).float().numpy() for x in (got, want))
            worst_rel = max(worst_rel, float(np.abs(g - w).max() / np.abs(ref32).max()))
    return (f"{off} of {total} values ({off / total:.1e}) differ from the float32 merge rounded to bf16, "
            f"by at most {worst_ulp} ulp (same sign; values near zero have tiny ulps), by at most {worst_rel:.1e} "
            "of the tensor's largest value")


def print_rows(rows: list[dict], probe: dict | None = None, macs: dict | None = None) -> None:
    """The table (medians; every run's seconds after them), the ratios and, with ``probe`` (see :func:`gemm_probe`)
    and ``macs`` ((model, tool) -> multiply-adds), each merge's GEMM lower bound."""
    print(f"\n{'model':<26} {'tool':<42} {'seconds':>8} {'CPU s':>7} {'peak RSS':>10}  runs (s)")
    for r in rows:
        runs = " ".join(f"{x:.1f}" for x in r.get("runs", []))
        print(f"{r['model']:<26} {r['tool']:<42} {r['seconds']:>8.1f} {r['cpu']:>7.1f} {r['rss'] / 2**30:>8.2f} GiB"
              f"  {runs}" + ("" if r["ok"] else "  FAILED"))
    if probe:
        print(f"\nthis machine, {probe['threads']} threads, in-place rank-128 addmm_: bf16 "
              f"{probe['bf16'] / 1e9:.0f} GMAC/s, f32 {probe['f32'] / 1e9:.0f} GMAC/s; importing torch "
              f"{probe['import_s']:.1f} s ({probe['import_cpu_s']:.1f} CPU s)")
    for label in dict.fromkeys(r["model"] for r in rows):
        by = {r["tool"]: r for r in rows if r["model"] == label}
        alone = by["convert (bf16)"]
        for tool, fused in by.items():
            if not tool.startswith("convert --lora"):
                continue
            line = f"{label}: {tool} takes {fused['seconds'] / alone['seconds']:.2f}x convert alone " \
                   f"(target <= 1.3x; {fused['cpu'] - alone['cpu']:+.1f} CPU s), " \
                   f"peak RSS {fused['rss'] / 2**30:.2f} GiB"
            n = (macs or {}).get((label, tool))
            if probe and n:
                gemm = n / probe["bf16" if "bf16 r" in tool else "f32"]
                line += f"; GEMM lower bound {gemm:.1f} s ({n / 1e12:.2f}e12 MAC) = {gemm / alone['seconds']:.2f}x " \
                        f"convert alone, + torch import {probe['import_cpu_s']:.1f} CPU s"
            if "peft merge_and_unload + save_pretrained" in by:
                p = by["peft merge_and_unload + save_pretrained"]
                c = by["  then quantize convert (bf16)"]
                line += f"; peft merge+save+convert {p['seconds'] + c['seconds']:.1f} s, {p['rss'] / 2**30:.2f} GiB"
            print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-8b", action="store_true")
    ap.add_argument("--no-smollm2", action="store_true", help="only the 8B shape (no identity LoRA training)")
    ap.add_argument("--no-f32", action="store_true", help="8B shape: only the bf16 adapter (not the f32 one)")
    ap.add_argument("--ram-disk", type=Path, metavar="DIR",
                    help="also a 6-layer slice of the 8B shape (49152-token vocabulary, ~3.4 GB) with its input and "
                         "output in DIR (e.g. /dev/shm/x: no disk at all, the worst case for the ratio)")
    ap.add_argument("--ram-disk-layers", type=int, default=4, metavar="N",
                    help="layers of the RAM-disk slice (default 4: ~2.5 GB, which with its output fits 6 GB)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="rounds of the 8B-shape runs, interleaved, medians reported (default 1)")
    ap.add_argument("--ram-disk-repeat", type=int, default=5, metavar="N",
                    help="rounds of the RAM-disk runs, interleaved, medians reported (default 5)")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench-out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import adapters
    import fixtures

    rows = [] if args.no_smollm2 else bench("smollm2+identity-r16", fixtures.smollm2(),
                                            {"identity r16": adapters.identity_lora()}, args.out, peft=True)
    errors = []
    macs: dict = {}
    probe = gemm_probe() if not (args.no_8b and not args.ram_disk) else None
    if not args.no_8b:
        cache = Path(os.environ["GGUF_FORGE_CACHE"]) / "bench"
        tok_src = fixtures.llama3() if fixtures.LLAMA3_TIKTOKEN.is_file() else fixtures.smollm2()
        base = synthetic_8b(cache / "llama3-8b-shape", tok_src)
        t = time.perf_counter()
        loras = {"bf16 r128": synthetic_adapter(base, cache / "llama3-8b-shape-lora-r128")}
        if not args.no_f32:
            loras["f32 r128"] = synthetic_adapter(base, cache / "llama3-8b-shape-lora-r128-f32", dtype="F32")
        print(f"rank-128 adapters ready ({time.perf_counter() - t:.0f} s)")
        rows += bench("llama3-8b-shape+r128", base, loras, args.out, peft=False, repeat=args.repeat)
        macs.update({("llama3-8b-shape+r128", f"convert --lora {tag} (bf16)"): adapter_macs(a)
                     for tag, a in loras.items()})
        names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.layers.31.mlp.gate_proj.weight"]
        errors = [(tag, base, adapter, names) for tag, adapter in loras.items()]
    if args.ram_disk:
        args.ram_disk.mkdir(parents=True, exist_ok=True)
        base = synthetic_8b(args.ram_disk / f"slice-{args.ram_disk_layers}l", fixtures.smollm2(),
                            dict(num_hidden_layers=args.ram_disk_layers, vocab_size=49152))
        loras = {"bf16 r128": synthetic_adapter(base, args.ram_disk / f"{base.name}-lora")}
        if not args.no_f32:
            loras["f32 r128"] = synthetic_adapter(base, args.ram_disk / f"{base.name}-lora-f32", dtype="F32")
        label = f"8b-shape {args.ram_disk_layers} layers, RAM disk"
        rows += bench(label, base, loras, args.ram_disk, peft=False, drop=False, repeat=args.ram_disk_repeat)
        macs.update({(label, f"convert --lora {tag} (bf16)"): adapter_macs(a) for tag, a in loras.items()})
    print_rows(rows, probe, macs)
    for tag, base, adapter, names in errors:  # in this process, after the timed ones (their peak RSS would
        print(f"{tag} adapter, BF16 output: " + merge_error(base, adapter, names))  # start from ours)


if __name__ == "__main__":
    main()
