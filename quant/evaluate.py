"""Quality of quantized files against a reference: perplexity, KL divergence, same-top-token rate.

All files are run by llama-cpp-python on the same tokens (the reference's tokenization of the text),
in chunks of ``ctx`` tokens with BOS first when the model adds one; as in llama.cpp's perplexity tool,
only the second half of each chunk is scored (every scored token has at least ctx/2 tokens of context).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ForgeError
from ..files import progress as progress_bar
from ..runtime import load_model


@dataclass
class EvalRow:
    file: str
    size_bytes: int
    ppl: float
    mean_kld: float | None = None
    p99_kld: float | None = None
    same_top: float | None = None
    tokens: int = 0


@dataclass
class EvalReport:
    reference: EvalRow
    candidates: list[EvalRow] = field(default_factory=list)
    ctx: int = 512
    chunks: int = 0

    def table(self, markdown: bool = False) -> str:
        rows = [self.reference, *self.candidates]
        head = ["file", "size MiB", "PPL", "mean KLD", "99% KLD", "same top"]

        def fmt(r: EvalRow, ref: bool) -> list[str]:
            return [Path(r.file).name, f"{r.size_bytes / 2**20:.1f}", f"{r.ppl:.4f}",
                    "ref" if ref else f"{r.mean_kld:.5f}", "ref" if ref else f"{r.p99_kld:.5f}",
                    "ref" if ref else f"{r.same_top:.2%}"]

        body = [fmt(r, i == 0) for i, r in enumerate(rows)]
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(b) + " |" for b in body]
            return "\n".join(lines)
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *body])

    def as_dict(self) -> dict:
        return {"ctx": self.ctx, "chunks": self.chunks, "reference": asdict(self.reference),
                "candidates": [asdict(c) for c in self.candidates]}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def evaluate(reference: str | Path, candidates: list[str | Path], text: str, ctx: int = 512,
             chunks: int | None = None, threads: int | None = None, progress: bool = True) -> EvalReport:
    nbytes = len(text.encode("utf-8"))
    if ctx > nbytes + 1:  # a token is at least one byte of text (one more for a leading space some tokenizers add)
        raise ForgeError(f"--text: {nbytes} bytes of text, fewer than one chunk of --ctx {ctx} tokens; give more "
                         "text or a smaller --ctx")
    ref = load_model(reference, n_ctx=ctx, threads=threads, logits_all=True, n_batch=ctx, n_ubatch=ctx)
    cands = [load_model(c, n_ctx=ctx, threads=threads, logits_all=True, n_batch=ctx, n_ubatch=ctx) for c in candidates]
    for c, path in zip(cands, candidates):
        if c.n_vocab() != ref.n_vocab():
            raise ForgeError(f"{path}: vocabulary of {c.n_vocab()} tokens, the reference has {ref.n_vocab()}; "
                             "not the same model")
    tokens = ref.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    n = len(tokens) // ctx
    if chunks:
        n = min(n, chunks)
    if n < 1:
        raise ForgeError(f"--text: {len(tokens)} tokens, fewer than one chunk of --ctx {ctx}")
    import llama_cpp

    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(ref.model)))
    first = ctx // 2
    nll_ref: list[float] = []
    per_cand: list[dict[str, list]] = [{"nll": [], "kld": [], "same": []} for _ in cands]
    with progress_bar(n * (1 + len(cands)), "eval", enabled=progress, unit="chunk") as bar:
        for i in range(n):
            chunk = list(tokens[i * ctx:(i + 1) * ctx])
            if add_bos:
                chunk[0] = ref.token_bos()
            target = np.array(chunk[first + 1:])
            lp_ref = _chunk_logprobs(ref, chunk, first)
            bar.update(1)
            nll_ref.extend((-lp_ref[np.arange(len(target)), target]).tolist())
            p_ref = np.exp(lp_ref)
            for c, acc in zip(cands, per_cand):
                lp = _chunk_logprobs(c, chunk, first)
                acc["nll"].extend((-lp[np.arange(len(target)), target]).tolist())
                acc["kld"].extend((p_ref * (lp_ref - lp)).sum(-1).tolist())
                acc["same"].extend((lp.argmax(-1) == lp_ref.argmax(-1)).tolist())
                bar.update(1)
    report = EvalReport(EvalRow(str(reference), Path(reference).stat().st_size, math.exp(np.mean(nll_ref)),
                                tokens=len(nll_ref)), ctx=ctx, chunks=n)
    for path, acc in zip(candidates, per_cand):
        kld = np.asarray(acc["kld"])
        report.candidates.append(EvalRow(str(path), Path(path).stat().st_size, math.exp(np.mean(acc["nll"])),
                                         float(kld.mean()), float(np.percentile(kld, 99)),
                                         float(np.mean(acc["same"])), len(kld)))
    return report


def _chunk_logprobs(llm, chunk: list[int], first: int) -> np.ndarray:
    """Log-probabilities predicting tokens first+1..end of the chunk (rows first..end-2 of the logits)."""
    llm.reset()
    llm.eval(chunk)
    logits = np.array(llm.scores[first:len(chunk) - 1], dtype=np.float32)
    return _log_softmax(logits)
