"""``quantize inspect``: what a GGUF file holds, as a dict (for ``--json``) or as text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ForgeError


def _value(field: Any) -> Any:
    import gguf

    if not field.types:
        return None
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if len(field.types) > 1 and field.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    part = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    v = part.tolist()[0]
    return bool(v) if field.types[0] == gguf.GGUFValueType.BOOL else v


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Summarise a GGUF: architecture, parameters, types, context, rope, tokenizer, template, provenance."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except FileNotFoundError:
        raise ForgeError(f"{path}: no such file") from None
    except Exception as e:
        raise ForgeError(f"{path}: not a readable GGUF file ({e})") from None
    kv = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}

    def get(key: str, default: Any = None) -> Any:
        return _value(kv[key]) if key in kv else default

    arch = get("general.architecture", "?")
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    n_params = 0
    for t in reader.tensors:
        tname = t.tensor_type.name
        counts[tname] += 1
        sizes[tname] += int(t.n_bytes)
        if not t.name.startswith("rope_freqs"):
            n_params += int(np.prod(t.shape))
    ftype = get("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(ftype).name.replace("MOSTLY_", "").replace("ALL_", "") if ftype is not None else None
    except ValueError:
        ftype_name = str(ftype)
    tokens = get("tokenizer.ggml.tokens", [])

    def tok(key: str) -> dict[str, Any] | None:
        i = get(key)
        if i is None:
            return None
        return {"id": i, "text": tokens[i] if 0 <= i < len(tokens) else None}

    template = get("tokenizer.chat_template")
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "architecture": arch,
        "name": get("general.name"),
        "basename": get("general.basename"),
        "finetune": get("general.finetune"),
        "size_label": get("general.size_label"),
        "license": get("general.license"),
        "parameters": n_params,
        "file_type": ftype_name,
        "tensor_types": {k: {"count": counts[k], "bytes": sizes[k]} for k in sorted(counts)},
        "context_length": get(f"{arch}.context_length"),
        "embedding_length": get(f"{arch}.embedding_length"),
        "block_count": get(f"{arch}.block_count"),
        "rope": {
            "freq_base": get(f"{arch}.rope.freq_base"),
            "dimension_count": get(f"{arch}.rope.dimension_count"),
            "scaling_type": get(f"{arch}.rope.scaling.type"),
            "scaling_factor": get(f"{arch}.rope.scaling.factor"),
            "rope_freqs_tensor": any(t.name.startswith("rope_freqs") for t in reader.tensors),
        },
        "tokenizer": {
            "model": get("tokenizer.ggml.model"),
            "pre": get("tokenizer.ggml.pre"),
            "n_tokens": len(tokens),
            "bos": tok("tokenizer.ggml.bos_token_id"),
            "eos": tok("tokenizer.ggml.eos_token_id"),
            "eot": tok("tokenizer.ggml.eot_token_id"),
            "pad": tok("tokenizer.ggml.padding_token_id"),
            "unk": tok("tokenizer.ggml.unknown_token_id"),
            "add_bos": get("tokenizer.ggml.add_bos_token"),
            "add_eos": get("tokenizer.ggml.add_eos_token"),
        },
        "chat_template": template,
        "imatrix": {k[len("quantize.imatrix."):]: get(k) for k in kv if k.startswith("quantize.imatrix.")},
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
        f"context       {info['context_length']}   embedding: {info['embedding_length']}   blocks: {info['block_count']}",
    ]
    r = info["rope"]
    rope = f"rope          base {r['freq_base']}, dims {r['dimension_count']}"
    if r["scaling_type"]:
        rope += f", scaling {r['scaling_type']} x{r['scaling_factor']}"
    if r["rope_freqs_tensor"]:
        rope += ", rope_freqs (llama3 scaling)"
    lines.append(rope)
    t = info["tokenizer"]
    lines.append(f"tokenizer     {t['model']} pre={t['pre']} tokens={t['n_tokens']} add_bos={t['add_bos']} add_eos={t['add_eos']}")
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
