"""Benchmark `quantize imatrix`: tokens/s of the torch statistic collection, CPU (and CUDA when present).

    python bench/imatrix.py [--chunks N] [--ctx 512]

Runs on the SmolLM2-135M-Instruct fixture with the default calibration text. Anchor (REFERENCE section 5):
llama.cpp's CPU imatrix on a 7B model runs ~80 tokens/s on 32 cores; a 7B is ~50x SmolLM2's compute per token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("GGUF_FORGE_CACHE", str(ROOT / ".cache"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int)
    args = ap.parse_args()
    import torch

    from gguf_forge.quant import compute_imatrix

    import fixtures

    model = fixtures.smollm2()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{'device':<8} {'threads':>7} {'chunks':>6} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for device in devices:
        _, s = compute_imatrix(model, ctx=args.ctx, chunks=args.chunks, device=device, progress=False)
        print(f"{device:<8} {torch.get_num_threads():>7} {s['chunks']:>6} {s['tokens']:>7} {s['seconds']:>8.1f} "
              f"{s['tokens_per_s']:>9.0f}")
    if "cuda" not in devices:
        print("(no CUDA device here: the cuda row is measured only where torch sees a GPU)")


if __name__ == "__main__":
    main()
