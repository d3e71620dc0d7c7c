"""The ``README.md`` model card of a pipeline output folder, from its manifest.

YAML front matter with the keys hubs index (``base_model``, ``tags``, ``quantized_by``, ``license``,
``language``, ``pipeline_tag``), a table of the files (size, bits per weight, smoke and quality figures)
and how to run them with Ollama, LM Studio, llama-cpp-python and llama.cpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _front_matter_yaml(text: str) -> str | None:
    """The YAML between a card's leading ``---`` lines, or None when it has none."""
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    return text[3:end] if end >= 0 else None


def base_card_metadata(base_dir: Path) -> dict[str, Any]:
    """Front matter of the base model's own card (``README.md``), or {} when it has none."""
    card = base_dir / "README.md"
    if not card.is_file():
        return {}
    raw = _front_matter_yaml(card.read_text(encoding="utf-8", errors="replace"))
    if raw is None:
        return {}
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _base_model_id(manifest: dict) -> str:
    spec = manifest["inputs"]["base"]["model"]
    if not Path(spec).exists() and "/" in spec:  # a hub id
        return spec.partition("@")[0]
    return Path(spec).name


def front_matter(manifest: dict, base_dir: Path) -> dict[str, Any]:
    meta = base_card_metadata(base_dir)
    fm: dict[str, Any] = {"base_model": _base_model_id(manifest)}
    if not manifest["inputs"]["loras"]:
        fm["base_model_relation"] = "quantized"
    tags = ["gguf", "llama.cpp", "ollama", "lm-studio", "quantized", "gguf-forge"]
    if manifest["inputs"]["loras"]:
        tags.append("lora-merged")
    if any(o.get("imatrix") for o in manifest["outputs"]):
        tags.append("imatrix")
    fm["tags"] = tags
    fm["quantized_by"] = "gguf-forge"
    if meta.get("license"):
        fm["license"] = meta["license"]
    if meta.get("language"):
        fm["language"] = meta["language"]
    fm["pipeline_tag"] = "text-generation"
    fm["library_name"] = "gguf"
    return fm


def _files_table(manifest: dict) -> str:
    smoke = manifest.get("smoke") or {}
    evals = {}
    ev = manifest.get("eval")
    if ev:
        for c in ev.get("candidates", []):
            evals[Path(c["file"]).name] = c
    head = ["file", "type", "imatrix", "size", "bits/weight", "smoke", "mean KLD", "same top token"]
    rows = []
    for o in manifest["outputs"]:
        if o["kind"] != "gguf":
            continue
        s = smoke.get(o["file"])
        e = evals.get(o["file"])
        rows.append([
            f"[{o['file']}](./{o['file']})", o["type"], "yes" if o.get("imatrix") else "no",
            f"{o['bytes'] / 2**20:.1f} MiB", f"{o.get('bits_per_weight', 0):.2f}",
            ("pass" if s.get("passed") else "FAIL") if s else "-",
            f"{e['mean_kld']:.5f}" if e and e.get("mean_kld") is not None else "-",
            f"{e['same_top']:.1%}" if e and e.get("same_top") is not None else "-",
        ])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _audit_text(manifest: dict) -> str:
    """The end-of-turn audit's verdict for the card."""
    audit = manifest.get("audit")
    if not audit:
        return ""
    if audit["ok"]:
        return (f"End-of-turn audit: every runtime stops where the template closes a reply (`{audit['turn_end']}`): "
                "tokenizer, generation_config, GGUF eos/eot, Modelfile and preset stops agree.")
    return "End-of-turn audit found mismatches:\n\n" + "\n".join(
        f"- {m['problem']} (fix: {m['fix']})" for m in audit["mismatches"])


def model_card(manifest: dict, base_dir: Path) -> str:
    """The model card text for the folder described by ``manifest``."""
    name = manifest["name"]
    fm = front_matter(manifest, base_dir)
    default = manifest["default"]
    preset = next((o["file"] for o in manifest["outputs"] if o["kind"] == "lmstudio-preset"), None)
    loras = manifest["inputs"]["loras"]
    origin = f"`{fm['base_model']}`"
    if loras:
        origin += " with the LoRA adapter" + ("s " if len(loras) > 1 else " ") + ", ".join(
            f"`{Path(x['adapter']).name}`" + (f" (weight {x['weight']})" if x["weight"] != 1.0 else "") for x in loras
        ) + " merged in"
    parts = [
        "---\n" + yaml.safe_dump(fm, sort_keys=False, allow_unicode=True) + "---",
        f"# {name} GGUF",
        f"GGUF files of {origin}, made with gguf-forge {manifest['tool']['version']} "
        f"(llama.cpp through llama-cpp-python {manifest['tool']['llama_cpp_python']}). "
        "Files ending in `-im` were quantized with an importance matrix computed on this model"
        + (f" from `{Path(manifest['inputs']['calibration']['file']).name}`." if manifest["inputs"].get("calibration")
           else "."),
        "## Files",
        _files_table(manifest),
    ]
    ev = manifest.get("eval")
    if ev:
        parts.append(f"Quality against the unquantized model ({ev['chunks']} chunks of {ev['ctx']} tokens "
                     f"of `{Path(manifest['inputs']['eval_text']['file']).name}`):\n\n{ev['markdown']}")
    if manifest.get("system_prompt"):
        parts.append("Default system prompt (the one the model was trained with, set in the Modelfile and the "
                     f"preset):\n\n```text\n{manifest['system_prompt']}\n```")
    stops = ", ".join(f"`{s}`" for s in manifest.get("stops") or [])
    parts += [
        "## Ollama",
        f"```sh\nollama create {name.lower()} -f Modelfile\nollama run {name.lower()}\n```\n\n"
        f"`Modelfile` uses `{default}` and the model's own chat template translated exactly; stop strings: {stops}. "
        "For another file, change its `FROM` line.",
        _audit_text(manifest),
        "## LM Studio",
        f"```sh\nlms import {default}\n```\n\n"
        + (f"Then copy `{preset}` to `~/.lmstudio/config-presets/` and pick it in the chat (system prompt, "
           "sampling, stop strings and prompt template)." if preset else ""),
        "## llama-cpp-python",
        "```python\nfrom llama_cpp import Llama\n\n"
        f"llm = Llama(model_path={default!r}, n_ctx=4096)\n"
        "print(llm.create_chat_completion(messages=[{\"role\": \"user\", \"content\": \"你好\"}])"
        "[\"choices\"][0][\"message\"][\"content\"])\n```",
        "## llama.cpp",
        f"```sh\nllama-cli -m {default} -cnv\nllama-server -m {default} --jinja\n```",
        "## OpenAI-compatible API and web chat",
        "```sh\nquantize serve .            # every GGUF of this folder; web chat at http://127.0.0.1:8000/\n```\n\n"
        "gguf-forge's `quantize serve` (or `quantize merge-convert ... --serve`) answers the OpenAI API "
        "(`/v1/chat/completions` with streaming and tool calls, `/v1/completions`, `/v1/models`) with the same "
        "template, stop tokens and default system prompt as `quantize chat`; each file is a model named after it "
        f"(`{Path(default).stem}`). Add `--api-key KEY` and `--host 0.0.0.0` to share it on a network.\n\n"
        "```python\nfrom openai import OpenAI\n\n"
        "client = OpenAI(base_url=\"http://127.0.0.1:8000/v1\", api_key=\"none\")\n"
        f"reply = client.chat.completions.create(model={Path(default).stem!r}, "
        "messages=[{\"role\": \"user\", \"content\": \"你好\"}])\n"
        "print(reply.choices[0].message.content)\n```",
        "## Provenance",
        "`manifest.json` lists the inputs with their sha256, the tool versions and every file with its size and "
        "sha256" + (", and the smoke-test replies" if manifest.get("smoke") else "") + ".",
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def card_front_matter(text: str) -> dict[str, Any]:
    """Parse a card's YAML front matter (used by tests and ``publish``)."""
    raw = _front_matter_yaml(text)
    if raw is None:
        raise ValueError("no front matter")
    return yaml.safe_load(raw)


__all__ = ["card_front_matter", "front_matter", "model_card"]
