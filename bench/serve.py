"""Benchmark `quantize serve`: single-stream generation tokens/s and time to first token through the OpenAI API,
against `quantize chat`'s own loop on the same file, in the same run (and llama-cpp-python's server if installed).

    python bench/serve.py [--model X.gguf] [--threads 1] [--tokens 128] [--rounds 5] [--json]

Three ways to get the same greedy reply to the same one-message conversation (default model: the SmolLM2-135M-Instruct
fixture at Q8_0), alternating round by round, each timed from the client's side the same way:

- chat:   ``ChatSession.say`` in this process, as ``quantize chat`` runs it (pieces to a callback);
- serve:  ``quantize serve`` in a child process, the ``openai`` client streaming ``/v1/chat/completions``;
- llama-cpp-python: ``python -m llama_cpp.server`` (its own chat formatting), streamed the same way; only when
  ``llama-cpp-python[server]`` is installed (``pip install 'llama-cpp-python[server]==0.3.36'``).

Generation tokens/s = (tokens - 1) / (last piece - first piece); time to first token = first piece - request sent
(evaluation of the round's new question included: each round asks a new one, the cached system prompt is reused
by all three). Medians of the rounds; target: serve >= 90% of chat's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from chat import default_model  # noqa: E402  (bench/chat.py: the SmolLM2 Q8_0 it benchmarks too)

PROMPT = "Write a long, detailed story about a dragon who learns to cook. Use at least five paragraphs."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def timed_chat(session, tokens: int, prompt: str) -> tuple[int, float, float]:
    """(tokens, generation tokens/s, seconds to the first piece) of one greedy reply through ChatSession, in a
    new conversation (the cache keeps the system prompt, as the servers' caches do)."""
    stamps: list[float] = []
    session.reset()
    start = time.perf_counter()
    session.say(prompt, on_token=lambda s: stamps.append(time.perf_counter()))
    n = len(session.last.tokens)
    return n, (n - 1) / (stamps[-1] - stamps[0]), stamps[0] - start


def timed_api(client, model: str, tokens: int, prompt: str) -> tuple[int, float, float]:
    stamps: list[float] = []
    usage = None
    start = time.perf_counter()
    for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=tokens, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
    n = usage.completion_tokens if usage else len(stamps)
    return n, (n - 1) / (stamps[-1] - stamps[0]), stamps[0] - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import openai

    from gguf_forge.tools.chat import ChatSession

    model = args.model or default_model()
    procs: dict[str, tuple[subprocess.Popen, str]] = {}
    port = free_port()
    procs["serve"] = (subprocess.Popen([sys.executable, "-m", "gguf_forge.tools.cli", "serve", str(model), "--port",
                                        str(port), "--threads", str(args.threads), "--ctx", "4096"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                      f"http://127.0.0.1:{port}")
    try:
        import llama_cpp.server  # noqa: F401

        port2 = free_port()
        procs["llama-cpp-python"] = (subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port2), "--n_threads",
             str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "4096", "--model_alias", "m"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), f"http://127.0.0.1:{port2}")
    except ImportError:
        print("llama-cpp-python[server] is not installed: its server is left out", file=sys.stderr)
    results: dict[str, list[tuple[int, float, float]]] = {"chat": [], **{k: [] for k in procs}}
    try:
        wait_up(procs["serve"][1] + "/health", procs["serve"][0])
        if "llama-cpp-python" in procs:
            wait_up(procs["llama-cpp-python"][1] + "/v1/models", procs["llama-cpp-python"][0])
        clients = {k: openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0) for k, (_, url) in
                   procs.items()}
        names = {"serve": model.name[:-5], "llama-cpp-python": "m"}
        with ChatSession(model, threads=args.threads, ctx=4096, max_tokens=args.tokens) as session:
            timed_chat(session, args.tokens, PROMPT)  # warm-up: pages mapped, caches filled
            for k, c in clients.items():
                timed_api(c, names[k], args.tokens, PROMPT)
            for i in range(args.rounds):
                prompt = f"Story {i + 1}. {PROMPT}"  # a new question each round: its tokens are evaluated
                results["chat"].append(timed_chat(session, args.tokens, prompt))
                for k, c in clients.items():
                    results[k].append(timed_api(c, names[k], args.tokens, prompt))
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    summary = {}
    for k, rows in results.items():
        summary[k] = {"tokens": rows[0][0], "gen_tokens_per_s": round(statistics.median(r[1] for r in rows), 2),
                      "ttft_s": round(statistics.median(r[2] for r in rows), 4)}
    base = summary["chat"]["gen_tokens_per_s"]
    for k in summary:
        summary[k]["vs_chat"] = round(summary[k]["gen_tokens_per_s"] / base, 3)
    info = {"model": str(model), "threads": args.threads, "rounds": args.rounds, "max_tokens": args.tokens,
            "cpu_count": os.cpu_count(), "results": summary, "target": "serve >= 0.90 of chat"}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{model.name}, {args.threads} thread(s), {args.rounds} rounds, up to {args.tokens} tokens, medians:")
    print(f"{'':18} {'tokens':>6} {'gen tok/s':>10} {'vs chat':>8} {'TTFT s':>8}")
    for k, s in summary.items():
        print(f"{k:18} {s['tokens']:>6} {s['gen_tokens_per_s']:>10.1f} {s['vs_chat']:>8.1%} {s['ttft_s']:>8.3f}")
    ok = summary["serve"]["vs_chat"] >= 0.90
    print(f"serve vs chat: {summary['serve']['vs_chat']:.1%} ({'meets' if ok else 'BELOW'} the 90% target)")


if __name__ == "__main__":
    main()
