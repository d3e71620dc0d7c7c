"""Benchmark `quantize imatrix`: speed against llama.cpp's llama-imatrix, memory on an 8B shape, quant quality.

    python bench/imatrix.py              # SmolLM2: 16 chunks of 512, 2 threads: tokens/s of the llama engine,
                                         # llama-imatrix (same llama.cpp, same GGUF) and the torch engine; then the
                                         # Q4_K_M KLD on held-out text with each of the three imatrices
    python bench/imatrix.py --8b         # also the Llama-3-8B-shaped synthetic checkpoint (bench/convert.py),
                                         # 2 chunks of 512: peak anonymous memory (RssAnon) of the llama engine
                                         # and llama-imatrix on the same F16 GGUF; the torch engine's predicted
                                         # 4 bytes per parameter (it runs only where that fits in memory)
    python bench/imatrix.py --8b --folder   # and `quantize imatrix FOLDER` (temporary F16 GGUF) on the 8B shape
    python bench/imatrix.py --no-smollm2 --8b --gguf-8b F16.gguf --engines-8b ours   # one 8B run, GGUF made before
    python bench/imatrix.py --head-ab --chunks 8 --repeat 3   # the llama engine with the output head skipped or not

The speed target compares tokens per second of the WHOLE command (calibration tokens / wall seconds from start to
exit: interpreter start-up, loading, tokenizing, decoding, writing the file; what a user waits for; gguf-forge's
bytecode compiled first, as ``pip install`` leaves it), the two commands alternating, ``--repeat`` times each: the
best run of each and the medians are compared (``--speed-only`` skips the torch row and the KLD rows, for more
repeats in one sitting). The decoding-only rate is printed beside it:
ours is the `--json` ``seconds`` (the decode loop), llama-imatrix's is its wall time less the time at which it logs
"computing over N chunks" (this build prints no llama_perf line).

Every run is a child process; its peak RssAnon (anonymous memory, not the page cache of the memory-mapped GGUF)
is sampled from /proc/PID/status every 20 ms, its peak RSS (VmHWM, file pages included) read at the end.
llama-imatrix is built once from the llama-cpp-python sdist that the installed llama-cpp-python came from
(``pip download --no-binary``; only the llama-imatrix target; cached under ~/.cache/gguf-forge/bench), a
benchmark-only dependency. Export GGUF_FORGE_CACHE=$HOME/.cache/gguf-forge to share the 8B checkpoint (its default
here is the worktree's .cache).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("GGUF_FORGE_CACHE", str(ROOT / ".cache"))

from convert import SHAPE_8B, drop_caches, synthetic_8b  # noqa: E402  (bench/convert.py)

BUILD_CACHE = Path.home() / ".cache" / "gguf-forge" / "bench"
#: the repository folders pyproject.toml maps into the gguf_forge package
PACKAGE_FOLDERS = ("gguf_forge", "convert", "quant", "modelfiles", "tools")


def measure(cmd: list[str], limit: float | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak RssAnon and VmHWM (bytes), return code, stdout and stderr. After ``limit``
    seconds it is interrupted (SIGINT) and marked ``stopped``: its memory peak so far still counts."""
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f)
    peak = {"anon": 0, "hwm": 0}
    stop = threading.Event()

    def sample() -> None:
        status = Path(f"/proc/{p.pid}/status")
        while not stop.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak["anon"] = max(peak["anon"], int(line.split()[1]) * 1024)
                    elif line.startswith("VmHWM:"):
                        peak["hwm"] = max(peak["hwm"], int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                pass
            stop.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stopped = False
    try:
        rc = p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        stopped = True
        p.send_signal(signal.SIGINT)
        try:
            rc = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
    stop.set()
    th.join()
    dt = time.perf_counter() - t
    out_f.seek(0)
    err_f.seek(0)
    res = dict(seconds=dt, anon=peak["anon"], hwm=peak["hwm"], rc=0 if stopped else rc, stopped=stopped,
               stdout=out_f.read().decode(errors="replace"),
               stderr=err_f.read().decode(errors="replace"))
    if rc != 0 and not stopped:
        print(f"FAILED ({rc}): {' '.join(cmd)}\n{res['stderr'][-3000:]}", file=sys.stderr)
    return res


def quantize(*args: str) -> list[str]:
    return [sys.executable, "-m", "gguf_forge.tools.cli", *map(str, args)]


def llama_imatrix_binary() -> Path:
    """llama-imatrix built from the llama-cpp-python sdist of the installed version (cached)."""
    from importlib.metadata import version

    ver = version("llama_cpp_python")
    build = BUILD_CACHE / f"llama.cpp-{ver}-build"
    exe = build / "bin" / "llama-imatrix"
    if exe.is_file():
        return exe
    src = BUILD_CACHE / f"llama.cpp-{ver}-src"
    if not (src / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={ver}", "-d", tmp], check=True)
            tar = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            subprocess.run(["tar", "xzf", str(tar), "-C", tmp], check=True)
            shutil.rmtree(src, ignore_errors=True)
            shutil.copytree(next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp")), src)
    print(f"building llama-imatrix {ver} (once, a few minutes)...", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_OPENSSL=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                    "-DBUILD_SHARED_LIBS=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-imatrix", "-j", str(os.cpu_count() or 2)],
                   check=True, stdout=subprocess.DEVNULL)
    return exe


def llama_imatrix_decode_seconds(stderr: str, wall: float) -> float | None:
    """llama-imatrix's decoding time: its wall time less the time at which it logs "computing over N chunks"
    (load and tokenization done; its log lines carry the time since start, M.SS.mmm.uuu). This build prints no
    llama_perf "prompt eval" line. What follows the last chunk (its last perplexity figure, writing the file) is
    counted as decoding, a few ms."""
    m = re.search(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I compute_imatrix: computing over", stderr, re.M)
    if not m:
        return None
    minutes, sec, ms, us = map(int, m.groups())
    return wall - (60 * minutes + sec + ms / 1e3 + us / 1e6)


def texts(out: Path) -> tuple[Path, Path]:
    """(calibration, held-out evaluation) text files: CPython's topic docs, disjoint slices, after the default
    calibration text (Chinese, English, code) for the calibration."""
    from pydoc_data.topics import topics

    from gguf_forge.quant import default_calibration_text

    prose = "\n".join(topics[k] for k in sorted(topics))
    cal, held = out / "calibration.txt", out / "held-out.txt"
    cal.write_text(default_calibration_text() + "\n" + prose[100_000:180_000], encoding="utf-8")
    held.write_text(prose[:60_000], encoding="utf-8")
    return cal, held


def row(label: str, r: dict, tokens: int | None = None, decode_s: float | None = None) -> dict:
    """One run's figures. ``tps``: tokens / whole-command wall seconds (what a user waits for: start-up, loading,
    tokenizing, decoding, writing the file): the figure the target compares. ``decode_tps``: tokens / decoding
    seconds only."""
    ok = r["rc"] == 0 and not r.get("stopped")
    return dict(label=label, seconds=r["seconds"], anon=r["anon"], hwm=r["hwm"], ok=r["rc"] == 0,
                stopped=r.get("stopped", False), tps=tokens / r["seconds"] if ok and tokens else None,
                decode_tps=tokens / decode_s if ok and tokens and decode_s else None)


def ours_row(label: str, r: dict) -> dict:
    if r["rc"] != 0 or r.get("stopped"):
        return row(label, r)
    stats = json.loads(r["stdout"])
    return row(label, r, stats["tokens"], stats["seconds"])


def llama_imatrix_row(label: str, r: dict, tokens: int) -> dict:
    return row(label, r, tokens, llama_imatrix_decode_seconds(r["stderr"], r["seconds"]))


def smollm2(out: Path, exe: Path, threads: int, chunks: int, eval_chunks: int, ppl_row: bool,
            repeat: int, speed_only: bool = False) -> list[dict]:
    import fixtures

    model = fixtures.smollm2()
    gguf = out / "SmolLM2-F16.gguf"
    if not gguf.is_file():
        subprocess.run(quantize("convert", model, "-o", gguf, "--outtype", "f16", "--no-progress"), check=True,
                       stdout=subprocess.DEVNULL)
    cal, held = texts(out)
    tokens = chunks * 512
    # gguf-forge's bytecode compiled once, as `pip install` does for an installed package: where
    # PYTHONDONTWRITEBYTECODE is set (containers often do) every run would otherwise compile ~50 modules from source
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / f) for f in PACKAGE_FOLDERS)], check=True,
                   stdout=subprocess.DEVNULL)
    common = ["--calibration", cal, "--chunks", chunks, "--threads", threads, "--json", "--no-progress"]
    ours_label, ref_label, torch_label = ("quantize imatrix GGUF (llama engine)", "llama-imatrix",
                                          "quantize imatrix --engine torch")
    files = {ours_label: out / "im-llama.gguf", ref_label: out / "im-llama-cpp.gguf",
             torch_label: out / "im-torch.gguf"}

    def llama_imatrix(im: Path, *extra: str) -> list[str]:
        return [str(exe), "-m", str(gguf), "-f", str(cal), "--chunks", str(chunks), "-t", str(threads), "-o",
                str(im), *extra]

    # the two timed commands alternate, `repeat` times each: the best run of each is compared
    runs: dict[str, list[dict]] = {ours_label: [], ref_label: []}
    for i in range(repeat):
        r = measure(quantize("imatrix", gguf, "-o", files[ours_label], *common))
        runs[ours_label].append(ours_row(f"{ours_label} #{i + 1}", r))
        r = measure(llama_imatrix(files[ref_label]))
        runs[ref_label].append(llama_imatrix_row(f"{ref_label} #{i + 1}", r, tokens))
    rows = [r for pair in zip(runs[ours_label], runs[ref_label]) for r in pair]
    if ppl_row:
        r = measure(llama_imatrix(out / "im-llama-cpp-noppl.gguf", "--no-ppl"))
        rows.append(llama_imatrix_row("llama-imatrix --no-ppl", r, tokens))
    if not speed_only:
        r = measure(quantize("imatrix", model, "-o", files[torch_label], *common, "--engine", "torch"))
        rows.append(ours_row(torch_label, r))
    print(f"\nSmolLM2-135M F16, {chunks} chunks x 512 = {tokens} tokens, {threads} threads; load "
          f"{os.getloadavg()[0]:.2f} at the end")
    print_rows(rows)
    _same_statistic(files[ours_label], files[ref_label])
    best = {k: min((r for r in v if r["tps"]), key=lambda r: r["seconds"], default=None) for k, v in runs.items()}
    ours, ref = best[ours_label], best[ref_label]
    if ours and ref:
        print(f"target (tokens / whole-command wall seconds, best of {repeat}): llama engine {ours['tps']:.0f} "
              f"tokens/s = {ours['tps'] / ref['tps']:.2f}x llama-imatrix's {ref['tps']:.0f} (target >= 1.0x)")
        if ours["decode_tps"] and ref["decode_tps"]:
            print(f"decoding only: llama engine {ours['decode_tps']:.0f} tokens/s = "
                  f"{ours['decode_tps'] / ref['decode_tps']:.2f}x llama-imatrix's {ref['decode_tps']:.0f}")
    med = {k: _median([r["seconds"] for r in v if r["tps"]]) for k, v in runs.items()}
    if med[ours_label] and med[ref_label]:
        print(f"target by medians of {repeat}: llama engine {med[ours_label]:.2f} s, llama-imatrix "
              f"{med[ref_label]:.2f} s: {med[ref_label] / med[ours_label]:.2f}x (tokens/s ratio)")
        dec = {k: _median([tokens / r["decode_tps"] for r in v if r["decode_tps"]]) for k, v in runs.items()}
        if dec[ours_label] and dec[ref_label]:
            print(f"decoding only, medians: llama engine {dec[ours_label]:.2f} s, llama-imatrix "
                  f"{dec[ref_label]:.2f} s: {dec[ref_label] / dec[ours_label]:.2f}x")
    if speed_only:
        return rows
    # quality: Q4_K_M with each imatrix, KLD against F16 on held-out text (disjoint from the calibration)
    quants = []
    for label in (ours_label, torch_label, ref_label):
        if not files[label].is_file():
            print(f"no imatrix from {label}: no KLD row", file=sys.stderr)
            continue
        qdir = out / f"q-{files[label].stem}"
        r = subprocess.run(quantize("quant", gguf, "--type", "Q4_K_M", "--imatrix", files[label], "-o", qdir,
                                    "--json", "--force"), capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            return rows
        quants.append((label, json.loads(r.stdout)[0]["output"]))
    r = subprocess.run(quantize("eval", gguf, *[q for _, q in quants], "--text", held, "--chunks", eval_chunks,
                                "--json", "--no-progress", "--threads", threads), capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
        return rows
    cands = json.loads(r.stdout)["candidates"]
    print(f"\nQ4_K_M on held-out text ({eval_chunks} chunks x 512, disjoint from the calibration), against F16:")
    klds = {}
    for (label, _), c in zip(quants, cands):
        klds[label] = c["mean_kld"]
        print(f"  imatrix from {label:<40} mean KLD {c['mean_kld']:.5f}  same top {c['same_top']:.2%}  "
              f"PPL {c['ppl']:.3f}")
    new = klds.get(ours_label)
    for label in (torch_label, ref_label):
        if new is not None and label in klds:
            print(f"  llama engine vs {label}: {new / klds[label] - 1:+.2%} (target within 2%)")
    return rows


def head_ab(out: Path, threads: int, chunks: int, repeat: int) -> None:
    """The llama engine's decoding time with the graphs stopped at the final norm (the output head not computed,
    the default) and with every graph whole, alternating in one process (after one untimed warm-up run)."""
    from gguf_forge.quant import imatrix_llama
    from gguf_forge.quant.imatrix import gguf_calibration_chunks

    import fixtures

    gguf = out / "SmolLM2-F16.gguf"
    if not gguf.is_file():
        subprocess.run(quantize("convert", fixtures.smollm2(), "-o", gguf, "--outtype", "f16", "--no-progress"),
                       check=True, stdout=subprocess.DEVNULL)
    cal, _ = texts(out)
    stop_after_first = imatrix_llama.Collector.end_graph

    def whole(self: imatrix_llama.Collector) -> None:
        stop_after_first(self)
        self.stop_at_norm = False

    seconds: dict[str, list[float]] = {"head skipped": [], "whole graphs": []}
    for i in range(repeat + 1):
        for mode, end_graph in (("head skipped", stop_after_first), ("whole graphs", whole)):
            imatrix_llama.Collector.end_graph = end_graph
            _, stats = imatrix_llama.run_llama(
                gguf, lambda llm: gguf_calibration_chunks(llm, str(cal), 512, chunks), 512, threads=threads,
                progress=False)
            if i:
                seconds[mode].append(stats["seconds"])
    imatrix_llama.Collector.end_graph = stop_after_first
    print(f"\noutput head A/B, SmolLM2 F16, {chunks} chunks x 512, {threads} threads, decoding seconds:")
    for mode, v in seconds.items():
        print(f"  {mode:<13} {' / '.join(f'{x:.2f}' for x in v)}  best {min(v):.2f}  median {_median(v):.2f}")
    a, b = seconds["head skipped"], seconds["whole graphs"]
    print(f"  head skipped / whole: best {min(a) / min(b):.3f}, medians {_median(a) / _median(b):.3f}")


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2


def _same_statistic(ours: Path, theirs: Path) -> None:
    """How far our imatrix is from llama-imatrix's on the same GGUF and text."""
    import numpy as np

    from gguf_forge.quant import read_imatrix

    if not (ours.is_file() and theirs.is_file()):
        return
    a, b = read_imatrix(ours), read_imatrix(theirs)
    same_counts = set(a.sums) == set(b.sums) and all(np.array_equal(a.counts[n], b.counts[n]) for n in a.sums)
    worst = max((float(np.abs(a.sums[n] - b.sums[n]).max() / max(np.abs(b.sums[n]).max(), 1e-30))
                 for n in a.sums if n in b.sums), default=float("nan"))
    print(f"llama engine vs llama-imatrix: {len(a.sums)} / {len(b.sums)} tensors, counts "
          f"{'equal' if same_counts else 'DIFFERENT'}, sums within {worst:.1e} of each tensor's largest")


def print_rows(rows: list[dict]) -> None:
    print(f"{'run':<44} {'wall s':>7} {'tok/s wall':>10} {'tok/s decode':>12} {'peak RssAnon':>13} {'peak RSS':>10}")
    for r in rows:
        tps = f"{r['tps']:.0f}" if r.get("tps") else "-"
        dtps = f"{r['decode_tps']:.0f}" if r.get("decode_tps") else "-"
        print(f"{r['label']:<44} {r['seconds']:>7.1f} {tps:>10} {dtps:>12} {r['anon'] / 2**30:>9.2f} GiB "
              f"{r['hwm'] / 2**30:>6.2f} GiB" + ("" if r["ok"] else "  FAILED")
              + ("  (stopped at the time limit: memory peak so far)" if r.get("stopped") else ""))


def eight_b(out: Path, exe: Path, threads: int, folder: bool, limit: float | None, gguf_8b: Path | None,
            engines: list[str]) -> list[dict]:
    """``engines``: any of ours, llama-imatrix, torch (one per bench-lock call when a run is long). ``gguf_8b``: an
    F16 GGUF of the 8B shape made beforehand (kept); otherwise one is converted here and removed afterwards."""
    import fixtures

    cache = Path(os.environ["GGUF_FORGE_CACHE"]) / "bench"
    tok_src = fixtures.llama3() if fixtures.LLAMA3_TIKTOKEN.is_file() else fixtures.smollm2()
    base = synthetic_8b(cache / "llama3-8b-shape", tok_src)
    cal, _ = texts(out)
    rows = []
    tokens = 2 * 512
    common = ["--calibration", cal, "--chunks", "2", "--threads", threads, "--json", "--no-progress"]
    if folder:
        drop_caches()
        r = measure(quantize("imatrix", base, "-o", out / "im8b-folder.gguf", *common), limit)
        rows.append(ours_row("quantize imatrix FOLDER (temp F16 GGUF)", r))
    gguf = gguf_8b or out / "llama3-8b-shape-F16.gguf"
    try:
        if gguf_8b is None and {"ours", "llama-imatrix"} & set(engines):
            subprocess.run(quantize("convert", base, "-o", gguf, "--outtype", "f16", "--no-progress"), check=True,
                           stdout=subprocess.DEVNULL)
        if "ours" in engines:
            r = measure(quantize("imatrix", gguf, "-o", out / "im8b.gguf", *common), limit)
            rows.append(ours_row("quantize imatrix GGUF (llama engine)", r))
        if "llama-imatrix" in engines:
            r = measure([str(exe), "-m", str(gguf), "-f", str(cal), "--chunks", "2", "-t", str(threads), "-o",
                         str(out / "im8b-llama-cpp.gguf")], limit)
            rows.append(llama_imatrix_row("llama-imatrix (same GGUF)", r, tokens))
    finally:
        if gguf_8b is None:
            gguf.unlink(missing_ok=True)
    c = SHAPE_8B
    h, ff, kv, layers, vocab = (c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * 128,
                                c["num_hidden_layers"], c["vocab_size"])
    n_params = 2 * vocab * h + layers * (2 * h * h + 2 * kv * h + 3 * h * ff + 2 * h) + h
    predicted = 4 * n_params
    avail = _mem_available()
    if avail > 1.2 * predicted and "torch" in engines:
        r = measure(quantize("imatrix", base, "-o", out / "im8b-torch.gguf", "--engine", "torch", *common), limit)
        rows.append(ours_row("quantize imatrix --engine torch", r))
    print(f"\nLlama-3-8B-shaped synthetic checkpoint, 2 chunks x 512, {threads} threads")
    print_rows(rows)
    if avail <= 1.2 * predicted:
        print(f"{'quantize imatrix --engine torch':<44} not run: float32 model = {predicted / 2**30:.1f} GiB "
              f"predicted ({n_params / 1e9:.2f}B parameters x 4 bytes), {avail / 2**30:.1f} GiB available")
    ours = next((r for r in rows if r["label"].startswith("quantize imatrix GGUF")), None)
    if ours:
        print(f"llama engine peak RssAnon {ours['anon'] / 2**30:.2f} GiB (target < 3 GB = 2.79 GiB)")
    return rows


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--8b", dest="eight_b", action="store_true", help="also the 8B-shaped checkpoint (~16 GB + 16 GB)")
    ap.add_argument("--folder", action="store_true", help="with --8b: also `quantize imatrix FOLDER`")
    ap.add_argument("--no-smollm2", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--eval-chunks", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="SmolLM2: runs of each timed command (alternating)")
    ap.add_argument("--no-ppl-row", action="store_true", help="skip the llama-imatrix --no-ppl run")
    ap.add_argument("--speed-only", action="store_true", help="SmolLM2: only the timed runs (no torch row, no KLD)")
    ap.add_argument("--head-ab", action="store_true", help="only the A/B of the llama engine with the output head "
                    "skipped vs whole graphs (decoding time, --chunks 8 suggested, --repeat runs each)")
    ap.add_argument("--gguf-8b", type=Path, help="with --8b: an F16 GGUF of the 8B shape made beforehand (kept)")
    ap.add_argument("--engines-8b", default="ours,llama-imatrix,torch",
                    help="with --8b: which runs (comma-separated: ours, llama-imatrix, torch); one per call keeps "
                    "each call short")
    ap.add_argument("--time-limit", type=float, help="with --8b: interrupt each 8B run after this many seconds "
                    "(its memory peak so far is reported; on a busy machine 2 x 512 tokens of an 8B take long)")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench-imatrix")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.head_ab:
        head_ab(args.out, args.threads, args.chunks, args.repeat)
        return
    exe = llama_imatrix_binary()
    if not args.no_smollm2:
        smollm2(args.out, exe, args.threads, args.chunks, args.eval_chunks, not args.no_ppl_row, args.repeat,
                args.speed_only)
    if args.eight_b:
        eight_b(args.out, exe, args.threads, args.folder, args.time_limit, args.gguf_8b,
                [e.strip() for e in args.engines_8b.split(",")])


if __name__ == "__main__":
    main()
