"""Benchmark `quantize chat`: generation tokens/s of ChatSession vs llama-cpp-python's lowest-level decode loop.

    python bench/chat.py [--model X.gguf] [--threads 1,2] [--tokens 128] [--rounds 5] [--json]

Both run in this process on the same GGUF (default: the SmolLM2-135M-Instruct fixture at Q8_0), with the same
threads, context size, llama.cpp buffer types and prompt tokens, alternating round by round:

- chat:      ``ChatSession.say`` as ``quantize chat`` calls it (template rendering, prefix reuse, streaming
             each piece to a callback, end-of-turn checks);
- low-level: ``llama_decode`` on a one-token ``llama_batch_get_one`` + ``llama_sampler_sample`` (greedy),
             nothing else, on a model and context created with ``llama_model_load_from_file`` /
             ``llama_init_from_model`` from the same parameter structs.

The reply is forced to ``--tokens`` tokens (a prompt that asks for a long text; the loop ends at the limit), and
the median of the rounds is compared (target: chat >= 95% of low-level). Memory bandwidth is measured in the same
run as a numpy copy of a 512 MiB array (bytes read + written per second, best of 5); the weight bytes each token
reads (llama_model_size) times generated tokens/s is compared with it (REFERENCE section 10: real systems reach
50-75%; a model this small is compute-bound on few cores, so expect less).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("GGUF_FORGE_CACHE", str(ROOT / ".cache"))

PROMPT = "Write a long, detailed story about a dragon who learns to cook. Use at least five paragraphs."


def default_model() -> Path:
    from gguf_forge.convert import convert

    import fixtures

    out = Path(os.environ["GGUF_FORGE_CACHE"]) / "bench" / "SmolLM2-135M-Instruct-Q8_0.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(fixtures.smollm2(), out, outtype="q8_0", progress=False)
    return out


def memory_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes read + written per second by a numpy copy of an ``nbytes`` array (best of ``repeats``)."""
    import numpy as np

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page first
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * nbytes / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class LowLevel:
    """The lowest-level loop llama-cpp-python offers: its ctypes bindings of llama.h, nothing else."""

    def __init__(self, path: Path, model_params, context_params) -> None:
        from llama_cpp import llama_cpp as C

        C.llama_backend_init()
        self.model = C.llama_model_load_from_file(str(path).encode(), model_params)
        self.ctx = C.llama_init_from_model(self.model, context_params)
        self.sampler = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        C.llama_sampler_chain_add(self.sampler, C.llama_sampler_init_greedy())

    def generate(self, prompt: list[int], n: int) -> tuple[list[int], float]:
        """Decode ``prompt``, then sample and decode ``n`` tokens; returns them and the generation seconds."""
        from llama_cpp import llama_cpp as C

        C.llama_memory_clear(C.llama_get_memory(self.ctx), True)
        arr = (C.llama_token * len(prompt))(*prompt)
        assert C.llama_decode(self.ctx, C.llama_batch_get_one(arr, len(prompt))) == 0
        one = (C.llama_token * 1)()
        batch = C.llama_batch_get_one(one, 1)
        out = []
        t = time.perf_counter()
        for _ in range(n):
            tok = C.llama_sampler_sample(self.sampler, self.ctx, -1)
            out.append(tok)
            one[0] = tok
            assert C.llama_decode(self.ctx, batch) == 0
        return out, time.perf_counter() - t

    def close(self) -> None:
        from llama_cpp import llama_cpp as C

        C.llama_sampler_free(self.sampler)
        C.llama_free(self.ctx)
        C.llama_model_free(self.model)


def bench(path: Path, threads: int, tokens: int, rounds: int, n_ctx: int = 2048) -> dict:
    from llama_cpp import llama_cpp as C

    from gguf_forge.tools.chat import ChatSession

    session = ChatSession(path, ctx=n_ctx, threads=threads, max_tokens=tokens)
    # the very parameters (threads, context, batch, buffer types, flash attention...) ChatSession's model has
    low = LowLevel(path, session.llm.model_params, session.llm.context_params)
    model_bytes = C.llama_model_size(low.model)
    chat_tps, low_tps, same = [], [], True
    session.say(PROMPT)  # warm-up: pages of the model in memory, graphs built
    prompt_tokens = session.last.prompt_ids
    low.generate(prompt_tokens, 8)
    for _ in range(rounds):
        session.reset(clear_cache=True)  # the whole prompt in one batch, as the low-level loop does
        sink: list[str] = []
        session.say(PROMPT, on_token=sink.append)
        if session.last.finish != "length":
            raise SystemExit(f"the reply ended after {len(session.last.tokens)} tokens; use a smaller --tokens")
        chat_tps.append(session.last.stats.gen_tps)
        out, seconds = low.generate(prompt_tokens, tokens)
        low_tps.append(tokens / seconds)
        same &= out == session.last.tokens
    session.close()
    low.close()
    chat, lowlevel = statistics.median(chat_tps), statistics.median(low_tps)
    return {"model": str(path), "threads": threads, "tokens": tokens, "rounds": rounds,
            "model_bytes": model_bytes, "chat_tok_s": chat, "lowlevel_tok_s": lowlevel, "ratio": chat / lowlevel,
            "same_tokens": same, "weight_bytes_per_s": model_bytes * chat}


def main() -> None:
    from gguf_forge.runtime import physical_cores

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="GGUF to run (default: SmolLM2-135M-Instruct Q8_0 fixture)")
    ap.add_argument("--threads", default=str(physical_cores()), help="comma-separated thread counts")
    ap.add_argument("--tokens", type=int, default=128, help="generated tokens per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = args.model or default_model()
    bandwidth = memory_bandwidth()
    rows = [bench(path, int(t), args.tokens, args.rounds) for t in args.threads.split(",")]
    for r in rows:
        r["memory_bandwidth_bytes_per_s"] = bandwidth
        r["bandwidth_fraction"] = r["weight_bytes_per_s"] / bandwidth
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{path.name}: {rows[0]['model_bytes'] / 2**20:.1f} MiB of weights read per token; "
          f"memory bandwidth (numpy copy, read+write): {bandwidth / 1e9:.2f} GB/s")
    print(f"{'threads':>7} {'chat tok/s':>10} {'low-level tok/s':>15} {'chat/low':>8} {'same tokens':>11} "
          f"{'weights GB/s':>12} {'of bandwidth':>12}")
    for r in rows:
        print(f"{r['threads']:>7} {r['chat_tok_s']:>10.1f} {r['lowlevel_tok_s']:>15.1f} {r['ratio']:>8.1%} "
              f"{str(r['same_tokens']):>11} {r['weight_bytes_per_s'] / 1e9:>12.2f} {r['bandwidth_fraction']:>12.1%}")


if __name__ == "__main__":
    main()
