"""``quantize inspect``: what a GGUF file holds, as a dict (for ``--json``) or as text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..files import gguf_field, open_gguf
from ..keys import GENERAL, LLM, ROPE, TOKENIZER, Quantize, arch_key

_IMATRIX_PREFIX = Quantize.IMATRIX_FILE.rpartition(".")[0] + "."  # "quantize.imatrix."


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Summarise a GGUF: architecture, parameters, types, context, rope, tokenizer, template, provenance."""
    path = Path(path)
    reader = open_gguf(path)

    def get(key: str, default: Any = None, kind: type | None = None) -> Any:
        value = gguf_field(reader, key, kind)
        return default if value is None else value

    arch = get(GENERAL.ARCHITECTURE, "?", str)
    n_params, tensor_types = _tensor_summary(reader)
    ftype = get(GENERAL.FILE_TYPE, None, int)
    ftype_name = None
    if ftype is not None:
        try:
            ftype_name = gguf.LlamaFileType(ftype).name.replace("MOSTLY_", "").replace("ALL_", "")
        except ValueError:
            ftype_name = str(ftype)
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "architecture": arch,
        "name": get(GENERAL.NAME),
        "basename": get(GENERAL.BASENAME),
        "finetune": get(GENERAL.FINETUNE),
        "size_label": get(GENERAL.SIZE_LABEL),
        "license": get(GENERAL.LICENSE),
        "parameters": n_params,
        "file_type": ftype_name,
        "tensor_types": tensor_types,
        "context_length": get(arch_key(LLM.CONTEXT_LENGTH, arch)),
        "embedding_length": get(arch_key(LLM.EMBEDDING_LENGTH, arch)),
        "block_count": get(arch_key(LLM.BLOCK_COUNT, arch)),
        "rope": {
            "freq_base": get(arch_key(ROPE.FREQ_BASE, arch)),
            "dimension_count": get(arch_key(ROPE.DIMENSION_COUNT, arch)),
            "scaling_type": get(arch_key(ROPE.SCALING_TYPE, arch)),
            "scaling_factor": get(arch_key(ROPE.SCALING_FACTOR, arch)),
            "rope_freqs_tensor": any(t.name.startswith("rope_freqs") for t in reader.tensors),
        },
        "tokenizer": _tokenizer_summary(get),
        "chat_template": get(TOKENIZER.CHAT_TEMPLATE, None, str),
        "imatrix": {k[len(_IMATRIX_PREFIX):]: get(k) for k in reader.fields if k.startswith(_IMATRIX_PREFIX)},
    }


def _tensor_summary(reader: Any) -> tuple[int, dict[str, dict[str, int]]]:
    """(parameter count without rope factors, {GGML type: {"count", "bytes"}})."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    n_params = 0
    for t in reader.tensors:
        tname = t.tensor_type.name
        counts[tname] += 1
        sizes[tname] += int(t.n_bytes)
        if not t.name.startswith("rope_freqs"):
            n_params += int(np.prod(t.shape))
    return n_params, {k: {"count": counts[k], "bytes": sizes[k]} for k in sorted(counts)}


def _tokenizer_summary(get: Any) -> dict[str, Any]:
    tokens = get(TOKENIZER.LIST, [], list)

    def tok(key: str) -> dict[str, Any] | None:
        i = get(key, None, int)
        if i is None:
            return None
        return {"id": i, "text": tokens[i] if 0 <= i < len(tokens) else None}

    return {
        "model": get(TOKENIZER.MODEL),
        "pre": get(TOKENIZER.PRE),
        "n_tokens": len(tokens),
        "bos": tok(TOKENIZER.BOS_ID),
        "eos": tok(TOKENIZER.EOS_ID),
        "eot": tok(TOKENIZER.EOT_ID),
        "pad": tok(TOKENIZER.PAD_ID),
        "unk": tok(TOKENIZER.UNK_ID),
        "add_bos": get(TOKENIZER.ADD_BOS),
        "add_eos": get(TOKENIZER.ADD_EOS),
    }


def format_inspection(info: dict[str, Any], template_lines: int = 6) -> str:
    """Human-readable form of :func:`inspect_gguf`'s result."""
    def mib(n: int) -> str:
        return f"{n / 2**20:,.1f} MiB"

    lines = [
        f"file          {info['file']} ({mib(info['size_bytes'])})",
        f"architecture  {info['architecture']}   name: {info['name']}   size label: {info['size_label']}",
        f"parameters    {info['parameters']:,}   file type: {info['file_type']}",
        "tensors       " + ", ".join(f"{k} x{v['count']} ({mib(v['bytes'])})" for k, v in info["tensor_types"].items()),
        f"context       {info['context_length']}   embedding: {info['embedding_length']}   "
        f"blocks: {info['block_count']}",
    ]
    r = info["rope"]
    rope = f"rope          base {r['freq_base']}, dims {r['dimension_count']}"
    if r["scaling_type"]:
        rope += f", scaling {r['scaling_type']} x{r['scaling_factor']}"
    if r["rope_freqs_tensor"]:
        rope += ", rope_freqs (llama3 scaling)"
    lines.append(rope)
    t = info["tokenizer"]
    lines.append(f"tokenizer     {t['model']} pre={t['pre']} tokens={t['n_tokens']} add_bos={t['add_bos']} "
                 f"add_eos={t['add_eos']}")
    specials = [f"{k}={v['text']!r}({v['id']})" for k in ("bos", "eos", "eot", "pad", "unk") if (v := t[k])]
    lines.append("special       " + (" ".join(specials) or "none"))
    tpl = info["chat_template"]
    if tpl:
        tl = tpl.splitlines()
        lines.append(f"chat template ({len(tl)} lines)")
        lines += ["  | " + x for x in tl[:template_lines]]
        if len(tl) > template_lines:
            lines.append("  | ...")
    else:
        lines.append("chat template none")
    if info["imatrix"]:
        lines.append("imatrix       " + ", ".join(f"{k}={v}" for k, v in info["imatrix"].items()))
    return "\n".join(lines)
