"""End-of-turn audit: every place a model's end-of-turn signal is set, in one table, with mismatches and fixes.

Sources: ``tokenizer_config.json`` eos, ``generation_config.json`` eos list, the GGUF's eos/eot/eom ids, the marker
that closes an assistant turn in the rendered chat template, the Modelfile's ``PARAMETER stop`` lines, the LM Studio
preset's stop strings and, with a GGUF, the token the model really ends its greedy replies with on a few prompts.
:func:`fix` writes what is missing (generation_config eos, the GGUF's eot id, Modelfile / preset stops), each file
atomically; what cannot be fixed by metadata (a model trained to end with another token) stays a mismatch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from .. import chat_template, files, runtime
from ..errors import ForgeError
from ..keys import TOKENIZER
from .source import special_token_text

PROMPTS = ["What is the capital of France?", "Say hello.", "Name three colours."]
_TAG = re.compile(r"<\|[^|\s<>]+\|>|</?[A-Za-z_][A-Za-z0-9_.\-]*>|\[/?[A-Z_]{2,}\]|<｜[^｜]+｜>")


@dataclass
class Signal:
    source: str  # where it is set
    what: str
    value: list[str]


@dataclass
class Mismatch:
    problem: str
    fix: str
    fixable: bool
    kind: str  # generation_config, gguf_eot, modelfile, preset, model
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Audit:
    end: str | None  # the marker that closes an assistant turn in the template
    signals: list[Signal] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def unfixable(self) -> list[Mismatch]:
        return [m for m in self.mismatches if not m.fixable]

    def as_dict(self) -> dict[str, Any]:
        return {"turn_end": self.end, "signals": [s.__dict__ for s in self.signals],
                "mismatches": [{"problem": m.problem, "fix": m.fix, "fixable": m.fixable} for m in self.mismatches],
                "ok": not self.mismatches}


def _locate(target: Path) -> dict[str, Path]:
    """The files to audit: a HF folder, a GGUF, or an output folder holding GGUF + Modelfile + preset."""
    target = Path(target)
    if not target.exists():
        raise ForgeError(f"{target}: no such file or directory")
    paths: dict[str, Path] = {}
    if target.is_file():
        if not files.is_gguf(target):
            raise ForgeError(f"{target}: neither a GGUF file nor a folder")
        paths["gguf"] = target
        folder = target.parent
    else:
        folder = target
        ggufs = sorted(p for p in folder.glob("*.gguf") if files.is_gguf(p))
        if ggufs:
            paths["gguf"] = max(ggufs, key=lambda p: p.stat().st_size) if len(ggufs) > 1 else ggufs[0]
        if (folder / "tokenizer_config.json").is_file():
            paths["hf"] = folder
    if (folder / "Modelfile").is_file():
        paths["modelfile"] = folder / "Modelfile"
        m = re.search(r"^FROM (.+)$", paths["modelfile"].read_text(encoding="utf-8"), re.M)
        named = (folder / m.group(1).strip()) if m else None
        if target.is_dir() and named is not None and named.is_file() and files.is_gguf(named):
            paths["gguf"] = named  # the file the Modelfile serves
    presets = sorted(p for p in folder.glob("*.preset.json") if not p.name.endswith(".legacy.preset.json"))
    if presets:
        paths["preset"] = presets[0]
    if not paths.get("gguf") and not paths.get("hf"):
        raise ForgeError(f"{target}: no GGUF and no Hugging Face model (tokenizer_config.json) in it")
    return paths


def _hf_vocab(folder: Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    if (folder / "tokenizer.json").is_file():
        tj = files.read_json_object(folder / "tokenizer.json")
        model_vocab = (tj.get("model") or {}).get("vocab")
        if isinstance(model_vocab, dict):
            vocab.update({k: v for k, v in model_vocab.items() if isinstance(v, int)})
        for t in tj.get("added_tokens") or []:
            if isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int):
                vocab[t["content"]] = t["id"]
    return vocab


def _stops_in_modelfile(text: str) -> list[str]:
    out = []
    for m in re.finditer(r'^PARAMETER stop ("""(.*?)"""|"([^"\n]*)"|(\S.*))$', text, re.M | re.S):
        out.append(next(g for g in m.groups()[1:] if g is not None))
    return out


def _turn_end_marker(template: str, bos: str, eos: str) -> str | None:
    end = chat_template.turn_end(template, bos_token=bos, eos_token=eos)
    if not end:
        return None
    m = _TAG.match(end)
    return m.group(0) if m else end.split()[0] if end.split() else None


def _greedy_ends(gguf_path: Path, template: str, bos: str, eos: str, n: int = 40) -> list[str]:
    """The token each greedy reply to :data:`PROMPTS` ends with ("" when it runs to ``n`` tokens)."""
    llm = runtime.load_model(gguf_path, n_ctx=512, threads=1)  # a few short replies: one thread is enough
    eog = runtime.eog_tokens(llm)
    out = []
    for q in PROMPTS:
        prompt = chat_template.render(template, [{"role": "user", "content": q}], bos_token=bos, eos_token=eos)
        tokens = llm.tokenize(prompt.encode(), add_bos=not (bos and prompt.startswith(bos)), special=True)
        llm.reset()
        last = ""
        for i, tok in enumerate(llm.generate(tokens, temp=0.0, top_k=1, reset=True)):
            if tok in eog:
                last = runtime.token_text(llm, tok)
                break
            if i >= n:
                break
        out.append(last)
    return out


def audit(target: Path, *, generate: bool = True, hf_dir: Path | None = None) -> Audit:
    """Collect every end-of-turn signal of ``target`` (HF folder, GGUF or output folder; ``hf_dir``: the Hugging
    Face folder it was made from, for tokenizer_config / generation_config) and the mismatches."""
    paths = _locate(target)
    if hf_dir is not None and (Path(hf_dir) / "tokenizer_config.json").is_file():
        paths["hf"] = Path(hf_dir)
    a = Audit(end=None, paths=paths)
    template, bos, eos = None, "", ""
    vocab: dict[str, int] = {}
    hf = paths.get("hf")
    if hf is not None:
        tc = files.read_json_object(hf / "tokenizer_config.json")
        where = hf / "tokenizer_config.json"
        eos = special_token_text(tc.get("eos_token"), where, "eos_token")
        bos = special_token_text(tc.get("bos_token"), where, "bos_token")
        a.signals.append(Signal("tokenizer_config.json", "eos_token", [eos] if eos else []))
        template = chat_template.from_hf_dir(hf)
        vocab = _hf_vocab(hf)
        if (hf / "generation_config.json").is_file():
            gc = files.read_json_object(hf / "generation_config.json")
            ids = gc.get("eos_token_id")
            ids = ids if isinstance(ids, list) else [] if ids is None else [ids]
            names = {v: k for k, v in vocab.items()}
            a.signals.append(Signal("generation_config.json", "eos_token_id",
                                    [f"{i} {names.get(i, '?')}" for i in ids]))
            paths["generation_config"] = hf / "generation_config.json"
    gg = paths.get("gguf")
    reader = None
    if gg is not None:
        reader = files.open_gguf(gg)
        tokens = reader.fields.get(TOKENIZER.LIST)

        def tok(i: int | None) -> str:
            return tokens.contents(i) if i is not None and tokens is not None and 0 <= i < len(tokens.data) else ""

        if tokens is not None:
            vocab = vocab or {tokens.contents(i): i for i in range(len(tokens.data))}
        for key, what in ((TOKENIZER.EOS_ID, "eos"), (TOKENIZER.EOT_ID, "eot"), (TOKENIZER.EOM_ID, "eom")):
            i = files.gguf_field(reader, key, int)
            a.signals.append(Signal(f"GGUF {gg.name}", f"{what} ({key})", [] if i is None else [f"{i} {tok(i)}"]))
        # the GGUF's template is the one llama.cpp, LM Studio and the Modelfile use (the pipeline's --template
        # replaces the HF folder's there): it wins over the folder's
        template = files.gguf_field(reader, TOKENIZER.CHAT_TEMPLATE, str) or template
        if not hf:
            eos = tok(files.gguf_field(reader, TOKENIZER.EOS_ID, int))
            bos = tok(files.gguf_field(reader, TOKENIZER.BOS_ID, int))
    if template:
        a.end = _turn_end_marker(chat_template.pick_default(template) or template, bos, eos)
        a.signals.append(Signal("chat template", "closes an assistant turn with", [a.end] if a.end else []))
    mf_stops: list[str] | None = None
    if "modelfile" in paths:
        mf_stops = _stops_in_modelfile(paths["modelfile"].read_text(encoding="utf-8"))
        a.signals.append(Signal("Modelfile", "PARAMETER stop", mf_stops))
    preset_stops: list[str] | None = None
    if "preset" in paths:
        preset = files.read_json_object(paths["preset"])
        fields = (preset.get("operation") or {}).get("fields") or []
        preset_stops = next((f.get("value") for f in fields if f.get("key") == "llm.prediction.stopStrings"), [])
        a.signals.append(Signal(f"LM Studio preset {paths['preset'].name}", "stopStrings", list(preset_stops)))
    end = a.end
    if end is None:
        return a
    end_id = vocab.get(end)
    sig = {s.source + "/" + s.what: s for s in a.signals}
    gcs = sig.get("generation_config.json/eos_token_id")
    if gcs is not None and end_id is not None and not any(v.split(" ", 1)[0] == str(end_id) for v in gcs.value):
        a.mismatches.append(Mismatch(
            f"generation_config.json eos_token_id {gcs.value} does not include {end} ({end_id}), the token the "
            "template closes a reply with: transformers/vLLM generation runs past the end of the turn",
            f"add {end_id} to eos_token_id in generation_config.json", True, "generation_config", {"id": end_id}))
    if gg is not None and reader is not None:
        ids = [files.gguf_field(reader, k, int) for k in (TOKENIZER.EOS_ID, TOKENIZER.EOT_ID, TOKENIZER.EOM_ID)]
        if end_id is not None and end_id not in ids:
            a.mismatches.append(Mismatch(
                f"the GGUF's eos/eot ids {ids[:2]} do not include {end} ({end_id}): runtimes that stop on eos/eot "
                "(llama.cpp server, LM Studio) may not stop at the end of a reply",
                f"set tokenizer.ggml.eot_token_id = {end_id} in {gg.name}", True, "gguf_eot", {"id": end_id}))
    if mf_stops is not None and end not in mf_stops:
        a.mismatches.append(Mismatch(f"the Modelfile's stops {mf_stops} lack {end}: one PARAMETER stop replaces "
                                     "Ollama's whole stop list", f"add PARAMETER stop \"{end}\"", True, "modelfile"))
    if mf_stops is not None and template:
        # a stop string that neither the template writes nor the vocabulary has can only cut a reply short
        convo = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                 {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
        try:
            rendered = chat_template.render(chat_template.pick_default(template) or template, convo, bos_token=bos,
                                            eos_token=eos)
        except ForgeError:
            rendered = ""
        for stop in mf_stops:
            if rendered and stop not in rendered and stop not in vocab:
                a.mismatches.append(Mismatch(
                    f"the Modelfile's stop {stop!r} never occurs: the template does not write it and it is no token "
                    "of the vocabulary", f"remove PARAMETER stop \"{stop}\"", True, "modelfile_extra",
                    {"stop": stop}))
    if preset_stops is not None and end not in preset_stops:
        a.mismatches.append(Mismatch(f"the LM Studio preset's stop strings lack {end}",
                                     f"add {end} to llm.prediction.stopStrings", True, "preset"))
    if generate and gg is not None and template:
        ends = _greedy_ends(gg, chat_template.pick_default(template) or template, bos, eos)
        a.signals.append(Signal("greedy replies (GGUF)", "ended with", ends))
        other = sorted({e for e in ends if e and e != end})
        if other:
            a.mismatches.append(Mismatch(
                f"the model ends its replies with {', '.join(other)} while the template closes a turn with {end}: "
                "a fine-tune trained with another end token (or the template does not match the training)",
                "retrain with the template's end token, or ship the template the model was trained with "
                "(--template); metadata cannot fix this", False, "model", {"ends": other}))
    return a


def set_gguf_metadata(path: Path, values: dict[str, int | str], remove: tuple[str, ...] = ()) -> None:
    """Rewrite ``path`` with the metadata ``values`` set (int: uint32, str: string) and ``remove`` dropped
    (tensors copied as they are, one at a time from the memory map), atomically."""
    reader = gguf.GGUFReader(path)
    arch = files.gguf_field(reader, "general.architecture", str) or "llama"
    with files.atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
        for f in reader.fields.values():
            if f.name.startswith("GGUF.") or f.name == "general.architecture" or f.name in values \
                    or f.name in remove:
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
        for key, v in values.items():
            if isinstance(v, str):
                writer.add_string(key, v)
            else:
                writer.add_uint32(key, v)
        for t in reader.tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            writer.write_tensor_data(t.data)
        writer.close()


def fix(a: Audit) -> tuple[list[str], list[Mismatch]]:
    """Write what is missing; (what was written, what could not be fixed)."""
    done, left = [], []
    for m in a.mismatches:
        if not m.fixable:
            left.append(m)
            continue
        if m.kind == "generation_config":
            p = a.paths["generation_config"]
            gc = files.read_json_object(p)
            ids = gc.get("eos_token_id")
            ids = ids if isinstance(ids, list) else [] if ids is None else [ids]
            gc["eos_token_id"] = [*ids, m.data["id"]]
            files.write_text(p, json.dumps(gc, indent=2) + "\n")
            done.append(f"{p}: eos_token_id {gc['eos_token_id']}")
        elif m.kind == "gguf_eot":
            set_gguf_metadata(a.paths["gguf"], {TOKENIZER.EOT_ID: m.data["id"]})
            done.append(f"{a.paths['gguf']}: {TOKENIZER.EOT_ID} = {m.data['id']}")
        elif m.kind == "modelfile":
            p = a.paths["modelfile"]
            text = p.read_text(encoding="utf-8")
            files.write_text(p, text.rstrip("\n") + f'\nPARAMETER stop "{a.end}"\n')
            done.append(f"{p}: PARAMETER stop \"{a.end}\"")
        elif m.kind == "modelfile_extra":
            p = a.paths["modelfile"]
            lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
            stop = m.data["stop"]
            kept = [x for x in lines if _stops_in_modelfile(x) != [stop]]
            files.write_text(p, "".join(kept))
            done.append(f"{p}: removed PARAMETER stop {stop!r}")
        elif m.kind == "preset":
            p = a.paths["preset"]
            preset = files.read_json_object(p)
            for f in preset["operation"]["fields"]:
                if f.get("key") == "llm.prediction.stopStrings":
                    f["value"] = [*f["value"], a.end]
                if f.get("key") == "llm.prediction.promptTemplate" and isinstance(f.get("value"), dict):
                    f["value"]["stopStrings"] = [*f["value"].get("stopStrings", []), a.end]
            files.write_text(p, json.dumps(preset, indent=2, ensure_ascii=False) + "\n")
            done.append(f"{p}: stop string {a.end}")
    return done, left


def table(a: Audit) -> str:
    """The human-readable table."""
    rows = [("source", "setting", "value")] + [(s.source, s.what, ", ".join(s.value) or "(none)") for s in a.signals]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    out = [f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}" for r in rows]
    if a.mismatches:
        out.append("")
        out += [f"MISMATCH: {m.problem}\n  fix: {m.fix}{'' if m.fixable else ' (cannot be fixed by --fix)'}"
                for m in a.mismatches]
    else:
        out.append("\nno mismatch")
    return "\n".join(out)
