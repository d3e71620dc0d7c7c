"""The main job, ``quantize merge-convert``: base + LoRA adapters -> a folder ready for Ollama, LM Studio and a hub.

Steps, each skipped when its inputs are unchanged (keys are hashes of the inputs, kept in
``OUTDIR/.gguf-forge/state.json``; a file's hash is cached by size and mtime so big inputs are read once):

1. merge + convert to ``<name>-BF16.gguf`` (or F16), the adapters merged while streaming;
2. with ``--imatrix``: the importance matrix on the merged model (``imatrix.gguf``);
3. every ``--quant`` type (``<name>-<TYPE>.gguf``) and every ``--imatrix-quant`` type (``<name>-<TYPE>-im.gguf``);
4. ``Modelfile`` (FROM the default quant, the first of ``--quant``) and the LM Studio preset;
5. with ``--smoke``: the smoke suite on every quant; with ``--eval TEXT``: PPL/KLD of every quant;
6. ``manifest.json`` (inputs and their hashes, versions, every output with size and sha256, smoke and eval
   results) and ``README.md`` (the model card).

The intermediate GGUF is only made when a later step needs it, and removed at the end unless
``keep_intermediate``. Every file is written atomically; a run killed at any point leaves hidden
``.*.partial`` files only, which the next run removes before it resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ... import __version__
from ...errors import ForgeError

STATE_DIR = ".gguf-forge"
NO_IMATRIX_BENEFIT = {"F32", "F16", "BF16", "Q8_0"}


@dataclass
class PipelineConfig:
    """What ``quantize merge-convert`` was asked to do (the CLI options, one field each)."""

    base: str
    outdir: Path
    loras: list[str] = field(default_factory=list)
    quants: list[str] = field(default_factory=lambda: ["Q4_K_M"])
    imatrix: str | None = None            # calibration: a text/JSONL file or "default"
    imatrix_quants: list[str] | None = None
    imatrix_ctx: int = 512
    imatrix_chunks: int | None = None
    template: str | None = None
    system: str | None = None
    ctx: int | None = None
    smoke: bool = False
    smoke_prompts: str | None = None
    eval_text: Path | None = None
    eval_chunks: int | None = None
    name: str | None = None
    outtype: str = "bf16"
    keep_intermediate: bool = False
    threads: int | None = None
    progress: bool = True


@dataclass
class PipelineResult:
    outdir: Path
    name: str
    manifest: dict
    ran: list[str]          # the steps that did work this time
    skipped: list[str]      # the steps whose inputs were unchanged
    warnings: list[str]

    @property
    def passed(self) -> bool:
        smoke = self.manifest.get("smoke") or {}
        return all(r.get("passed", False) for r in smoke.values())


# ---------------------------------------------------------------------------------------------- hashing


class _State:
    """Step keys and a file-hash cache, saved atomically after every step."""

    def __init__(self, outdir: Path):
        self.path = outdir / STATE_DIR / "state.json"
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.hashes: dict[str, list] = data.get("hashes", {})
        self.steps: dict[str, dict] = data.get("steps", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_text(self.path, json.dumps({"hashes": self.hashes, "steps": self.steps}, indent=1))

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        cached = self.hashes.get(key)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        self.hashes[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        return h.hexdigest()

    def folder_hash(self, folder: Path) -> str:
        """One hash over every visible file of a model or adapter folder (names and contents)."""
        h = hashlib.sha256()
        for p in sorted(folder.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                h.update(p.name.encode() + b"\0" + self.sha256(p).encode())
        return h.hexdigest()

    def done(self, step: str, key: str, outputs: list[Path]) -> bool:
        """True when ``step`` last ran with ``key`` and its outputs are still the files it wrote."""
        rec = self.steps.get(step)
        if not rec or rec.get("key") != key:
            return False
        for p in outputs:
            if not p.is_file() or rec.get("files", {}).get(p.name) != self.sha256(p):
                return False
        return True

    def record(self, step: str, key: str, outputs: list[Path], **extra: Any) -> None:
        self.steps[step] = {"key": key, "files": {p.name: self.sha256(p) for p in outputs}, **extra}
        self.save()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _write_text(path: Path, text: str) -> bool:
    """Write ``text`` atomically; leave the file alone (mtime too) when it already holds exactly that."""
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------------------------------------- pipeline


def default_name(base_dir: Path, lora_dirs: list[Path]) -> str:
    """The output basename: the adapter folder's name for one adapter, else the base folder's name."""
    src = lora_dirs[0] if len(lora_dirs) == 1 else base_dir
    name = src.name
    if name.startswith("models--"):  # a hub cache snapshot: use the repo name
        name = name.split("--")[-1]
    if src.parent.name == "snapshots":
        name = src.parent.parent.name.split("--")[-1]
    return name


def run_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print) -> PipelineResult:
    """Run every step of the pipeline for ``cfg``, resuming where an earlier run stopped."""
    from ...convert import parse_lora_spec, resolve_model
    from ...quant import NEEDS_IMATRIX, parse_types

    quants = parse_types(",".join(cfg.quants))
    im_quants = parse_types(",".join(cfg.imatrix_quants)) if cfg.imatrix_quants else []
    if im_quants and not cfg.imatrix:
        raise ForgeError("--imatrix-quant needs --imatrix CALIBRATION (a text or JSONL file, or 'default')")
    if cfg.imatrix and not cfg.imatrix_quants:
        im_quants = [t for t in quants if t not in NO_IMATRIX_BENEFIT]
    for t in quants:
        if t in NEEDS_IMATRIX:
            raise ForgeError(f"--quant {t} needs an importance matrix: put it in --imatrix-quant and give --imatrix")
    if cfg.outtype.lower() not in ("bf16", "f16", "f32", "auto"):
        raise ForgeError(f"--outtype {cfg.outtype}: expected bf16, f16, f32 or auto")
    if cfg.eval_text is not None and not Path(cfg.eval_text).is_file():
        raise ForgeError(f"--eval {cfg.eval_text}: no such file")
    if cfg.imatrix and cfg.imatrix != "default" and not Path(cfg.imatrix).is_file():
        raise ForgeError(f"--imatrix {cfg.imatrix}: no such file (give a text or JSONL file, or 'default')")

    base_dir = resolve_model(cfg.base, what="--base")
    specs = [parse_lora_spec(x) for x in cfg.loras]
    lora_dirs = [resolve_model(s.path, what="--lora") for s in specs]
    template_src = None  # --template: written into the GGUF, the Modelfile and the preset
    if cfg.template:
        from ...modelfiles import load_template

        template_src = load_template(cfg.template)
    from ...convert import Checkpoint
    from ...convert.arch import for_config

    for_config(Checkpoint(base_dir).config)  # a base we cannot convert fails before anything is written
    _check_template_early(base_dir, lora_dirs, cfg)
    name = cfg.name or default_name(base_dir, lora_dirs)
    outdir = Path(cfg.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ForgeError(f"-o {outdir}: exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    if not os.access(outdir, os.W_OK):
        raise ForgeError(f"-o {outdir}: not writable")
    for stale in outdir.glob(".*.partial"):  # left by a killed run
        stale.unlink(missing_ok=True)

    state = _State(outdir)
    ran: list[str] = []
    skipped: list[str] = []
    warnings: list[str] = []

    log(f"hashing inputs ({base_dir}{''.join(', ' + str(d) for d in lora_dirs)})...")
    inputs = {
        "base": {"model": cfg.base, "sha256": state.folder_hash(base_dir)},
        "loras": [{"adapter": s.path, "weight": s.weight, "sha256": state.folder_hash(d)}
                  for s, d in zip(specs, lora_dirs)],
    }
    calib_text = None
    if cfg.imatrix:
        from ...quant import default_calibration_text

        calib_text = default_calibration_text() if cfg.imatrix == "default" else Path(cfg.imatrix).read_text("utf-8")
        inputs["calibration"] = {"file": cfg.imatrix,
                                 "sha256": hashlib.sha256(calib_text.encode("utf-8")).hexdigest()}
    if cfg.eval_text:
        inputs["eval_text"] = {"file": str(cfg.eval_text), "sha256": state.sha256(Path(cfg.eval_text))}
    state.save()

    outtype = cfg.outtype.lower()
    k_convert = _key("convert", __version__, inputs["base"], inputs["loras"], outtype, name, cfg.ctx, template_src)
    from ...convert.converter import resolve_outtype

    inter_type = resolve_outtype(outtype, Checkpoint(base_dir)).upper()  # auto: BF16 for bf16 checkpoints, else F16
    intermediate = outdir / f"{name}-{inter_type}.gguf"

    def need_intermediate() -> Path:
        if state.done("convert", k_convert, [intermediate]):
            return intermediate
        from ...convert import convert, parse_override

        log(f"merge + convert -> {intermediate.name}")
        overrides = []
        if template_src is not None:  # the template the fine-tune was trained with goes into the GGUF too
            overrides.append(parse_override(f"tokenizer.chat_template=str:{template_src}"))
        if cfg.ctx:
            arch = for_config(Checkpoint(base_dir).config).arch_name
            overrides.append(parse_override(f"{arch}.context_length=int:{cfg.ctx}"))
        res = convert(base_dir, intermediate, outtype=outtype, overrides=overrides, progress=cfg.progress,
                      name=name, loras=specs)
        warnings.extend(res.warnings)
        for w in res.warnings:
            log(f"warning: {w}")
        state.record("convert", k_convert, [intermediate], n_params=res.n_params, pre_tokenizer=res.pre_tokenizer)
        ran.append("convert")
        return intermediate

    # ---- imatrix
    imatrix_path = outdir / "imatrix.gguf"
    k_imatrix = None
    if cfg.imatrix:
        k_imatrix = _key("imatrix", k_convert, inputs["calibration"], cfg.imatrix_ctx, cfg.imatrix_chunks)
        if state.done("imatrix", k_imatrix, [imatrix_path]):
            skipped.append("imatrix")
        else:
            from ...quant import compute_imatrix, write_gguf

            log(f"importance matrix on the merged model ({cfg.imatrix} calibration) -> {imatrix_path.name}")
            calib_arg = cfg.imatrix
            im, stats = compute_imatrix(base_dir, calibration=calib_arg, ctx=cfg.imatrix_ctx,
                                        chunks=cfg.imatrix_chunks, loras=specs, progress=cfg.progress,
                                        threads=cfg.threads, log=log)
            write_gguf(im, imatrix_path)
            state.record("imatrix", k_imatrix, [imatrix_path], stats=stats)
            ran.append("imatrix")

    # ---- quantize
    from ...quant import quantize

    jobs = [(t, False) for t in quants] + [(t, True) for t in im_quants]
    quant_files: list[tuple[str, bool, Path]] = []
    for t, with_im in jobs:
        out = outdir / f"{name}-{t}{'-im' if with_im else ''}.gguf"
        step = f"quant:{out.name}"
        k = _key("quant", k_convert, t, k_imatrix if with_im else None)
        quant_files.append((t, with_im, out))
        if state.done(step, k, [out]):
            skipped.append(step)
            continue
        src = need_intermediate()
        log(f"quantize {t}{' with the imatrix' if with_im else ''} -> {out.name}")
        quantize(src, [t], outdir, imatrix=imatrix_path if with_im else None, threads=cfg.threads, force=True,
                 basename=name, imatrix_label=imatrix_path.name if with_im else None)
        state.record(step, k, [out])
        ran.append(step)
    default_quant = quant_files[0][2]

    # ---- Modelfile + LM Studio preset (cheap and deterministic: always regenerated, rewritten only on change)
    from ...modelfiles import write_modelfile

    mf = write_modelfile(default_quant, outdir, gguf=default_quant, source_dir=base_dir, template=cfg.template,
                         system=cfg.system, ctx=cfg.ctx, name=name)
    warnings.extend(mf.warnings)
    for w in mf.warnings:
        log(f"warning: {w}")

    # ---- smoke
    smoke: dict[str, dict] = {}
    if cfg.smoke:
        from ..chat import load_prompts, run_smoke

        prompts_key = state.sha256(Path(cfg.smoke_prompts)) if cfg.smoke_prompts else "default"
        for t, with_im, out in quant_files:
            step = f"smoke:{out.name}"
            k = _key("smoke", state.sha256(out), prompts_key, cfg.system, cfg.template)
            rec = state.steps.get(step)
            if rec and rec.get("key") == k:
                smoke[out.name] = rec["result"]
                skipped.append(step)
                continue
            log(f"smoke test {out.name}")
            prompts = load_prompts(cfg.smoke_prompts) if cfg.smoke_prompts else None
            report = run_smoke([out], prompts, threads=cfg.threads, template=cfg.template, system=cfg.system,
                               progress=cfg.progress)[0]
            smoke[out.name] = {**report.as_dict(), "file": out.name}
            state.steps[step] = {"key": k, "result": smoke[out.name]}
            state.save()
            ran.append(step)

    # ---- eval
    evaluation = None
    if cfg.eval_text:
        k = _key("eval", k_convert, [state.sha256(p) for _, _, p in quant_files], inputs["eval_text"],
                 cfg.eval_chunks)
        rec = state.steps.get("eval")
        if rec and rec.get("key") == k:
            evaluation = rec["result"]
            skipped.append("eval")
        else:
            from ...quant import evaluate

            src = need_intermediate()
            log(f"quality against {src.name} on {cfg.eval_text}")
            report = evaluate(src, [p for _, _, p in quant_files], Path(cfg.eval_text).read_text("utf-8"),
                              chunks=cfg.eval_chunks, threads=cfg.threads, progress=cfg.progress)
            evaluation = report.as_dict()
            evaluation["markdown"] = report.table(markdown=True)
            state.steps["eval"] = {"key": k, "result": evaluation}
            state.save()
            ran.append("eval")

    if "convert" not in ran:
        skipped.append("convert")
    if not cfg.keep_intermediate and intermediate.exists():
        intermediate.unlink()
        state.steps.pop("convert", None)
        state.save()

    # ---- model card + manifest
    from .card import model_card

    n_params_total = _gguf_params(default_quant)  # from the file's tensor shapes: the same on every re-run
    outputs: list[dict] = []
    files: list[tuple[Path, str, dict]] = []
    for t, with_im, out in quant_files:
        files.append((out, "gguf", {"type": t, "imatrix": with_im}))
    if cfg.keep_intermediate and intermediate.is_file():
        files.append((intermediate, "gguf", {"type": inter_type, "imatrix": False}))
    if cfg.imatrix:
        files.append((imatrix_path, "imatrix", {}))
    files.append((mf.modelfile, "modelfile", {}))
    files.append((mf.preset, "lmstudio-preset", {}))
    if mf.legacy_preset:
        files.append((mf.legacy_preset, "lmstudio-legacy-preset", {}))
    for p, kind, extra in files:
        entry = {"file": p.name, "bytes": p.stat().st_size, "sha256": state.sha256(p), "kind": kind, **extra}
        if kind == "gguf" and n_params_total:
            entry["bits_per_weight"] = round(p.stat().st_size * 8 / n_params_total, 3)
        outputs.append(entry)
    manifest: dict[str, Any] = {
        "tool": {"name": "gguf-forge", "version": __version__, "llama_cpp_python": _llama_cpp_version()},
        "name": name,
        "inputs": inputs,
        "options": {"quant": quants, "imatrix_quant": im_quants, "outtype": outtype, "ctx": cfg.ctx,
                    "template": cfg.template, "system": cfg.system, "imatrix_ctx": cfg.imatrix_ctx if cfg.imatrix else None,
                    "imatrix_chunks": cfg.imatrix_chunks},
        "parameters": n_params_total,
        "default": default_quant.name,
        "stops": mf.stops,
        "system_prompt": mf.system,
        "smoke": smoke or None,
        "eval": evaluation,
        "outputs": outputs,
    }
    card = model_card(manifest, base_dir)
    card_path = outdir / "README.md"
    _write_text(card_path, card)
    manifest["outputs"].append({"file": card_path.name, "bytes": card_path.stat().st_size,
                                "sha256": state.sha256(card_path), "kind": "model-card"})
    _write_text(outdir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    state.save()
    return PipelineResult(outdir, name, manifest, ran, skipped, warnings)


def _check_template_early(base_dir: Path, lora_dirs: list[Path], cfg: PipelineConfig) -> None:
    """Translate the chat template once before the long steps: one we cannot reproduce stops the run now."""
    import tempfile

    from ...modelfiles import write_modelfile

    tok_dir = next((d for d in reversed(lora_dirs) if (d / "tokenizer_config.json").is_file()), base_dir)
    with tempfile.TemporaryDirectory(prefix="gguf-forge-check-") as tmp:
        target = Path(tmp) / "check.gguf"
        target.write_bytes(b"GGUF")
        write_modelfile(tok_dir, Path(tmp), gguf=target, template=cfg.template, system=cfg.system, name="check")


def _gguf_params(path: Path) -> int:
    import gguf
    import numpy as np

    r = gguf.GGUFReader(path)
    return int(sum(int(np.prod(t.shape)) for t in r.tensors if not t.name.startswith("rope_freqs")))


def _llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:  # pragma: no cover
        return "unknown"
