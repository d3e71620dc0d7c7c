"""The main job, ``quantize merge-convert``: base + LoRA adapters -> a folder ready for Ollama, LM Studio and a hub.

The job is a list of :class:`Step` s, each skipped when its inputs are unchanged (keys are hashes of the inputs,
kept in ``OUTDIR/.gguf-forge/state.json``; a file's hash is cached by size and mtime so big inputs are read once):

1. ``convert``: merge + convert to ``<name>-BF16.gguf`` (or F16), the adapters merged while streaming;
2. ``imatrix`` (with ``--imatrix``): the importance matrix on the merged model (``imatrix.gguf``);
3. ``quant:<file>``: every ``--quant`` type (``<name>-<TYPE>.gguf``) and every ``--imatrix-quant`` type
   (``<name>-<TYPE>-im.gguf``);
4. ``Modelfile`` (FROM the default quant, the first of ``--quant``) and the LM Studio preset;
5. ``smoke:<file>`` (with ``--smoke``): the smoke suite on every quant; ``eval`` (with ``--eval TEXT``): PPL/KLD
   of every quant;
6. ``manifest.json`` (inputs and their hashes, versions, every output with size and sha256, smoke and eval
   results) and ``README.md`` (the model card).

The intermediate GGUF is only made when a later step that must run needs it, and removed at the end unless
``keep_intermediate``. Every file is written atomically; a run killed at any point leaves hidden
``.*.partial`` files only, which the next run removes before it resumes. A run holds ``OUTDIR/.gguf-forge/lock``
from start to end: a second run into the same folder is refused ("OUTDIR is in use by PID n") rather than
racing the first. Every input file (calibration, evaluation text, chat template, smoke prompts) is read and
checked before the first long step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ... import __version__, chat_template, files, keys, runtime
from ...convert import Checkpoint, KVOverride, LoraSpec, convert, parse_lora_spec, resolve_model
from ...convert.arch import for_config
from ...convert.converter import OUTTYPES, resolve_outtype
from ...errors import ForgeError
from ...modelfiles import ModelfileResult, write_modelfile
from ...modelfiles.audit import audit as audit_signals
from ...quant import (
    NEEDS_IMATRIX,
    compute_imatrix,
    default_calibration_text,
    evaluate,
    parse_types,
    quantize,
    write_gguf,
)
from ...quant.imatrix import DEFAULT_CALIBRATION, load_calibration
from ..chat import load_prompts, run_smoke
from .card import model_card

STATE_DIR = ".gguf-forge"
NO_IMATRIX_BENEFIT = {"F32", "F16", "BF16", "Q8_0"}
# the intermediate GGUF the quants are made from: a float type (llama.cpp does not requantize)
INTERMEDIATE_OUTTYPES = [t for t in OUTTYPES if not t.startswith("q")] + ["auto"]


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
    imatrix_engine: str = "llama"         # llama: on the intermediate GGUF (memory-mapped); torch: the whole HF model
    # the torch engine's placement (quant/placement.py: device map, memory budget, offload folder; default: the
    # whole model on the CPU); not part of the step's inputs: where the model runs does not change the statistic
    imatrix_device_map: str | None = None
    imatrix_max_memory: str | None = None
    imatrix_offload_folder: Path | None = None
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
    allow_nonfinite: bool = False     # write NaN/Inf weights instead of refusing the checkpoint
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


# ---------------------------------------------------------------------------------------------- steps


@dataclass
class Step:
    """One step of the job, as data: its name, what its key is made of, what it writes, how it is done.

    The key is :func:`files.sha256_text` over ``inputs``, where a :class:`Path` stands for its file's sha256, a
    :class:`Step` for that step's key and a list for its items. A step is skipped when its key and the hashes of its
    ``outputs`` are those of its last run; ``run`` returns what the state keeps beside them (``result`` for smoke
    and eval, statistics). ``needs``: lazy steps whose outputs ``run`` reads, made first unless done. A ``lazy``
    step runs only as another's need; an unrecorded one (cheap, writing only what changed) always runs, uncounted.
    """

    name: str
    run: Callable[[], Any]
    inputs: tuple[Any, ...] = ()
    outputs: list[Path] = field(default_factory=list)
    needs: list[Step] = field(default_factory=list)
    message: str = ""
    lazy: bool = False
    recorded: bool = True


class _State:
    """Step records and a file-hash cache, saved atomically after every step."""

    def __init__(self, outdir: Path):
        self.path = outdir / STATE_DIR / "state.json"
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, RecursionError):
            data = {}
        # a damaged or hand-edited record is forgotten (its steps are redone), never trusted
        data = data if isinstance(data, dict) else {}
        hashes, steps = data.get("hashes"), data.get("steps")
        self.hashes: dict[str, list] = {k: v for k, v in hashes.items() if isinstance(v, list) and len(v) == 3} \
            if isinstance(hashes, dict) else {}
        self.steps: dict[str, dict] = {k: v for k, v in steps.items() if isinstance(v, dict)
                                       and isinstance(v.get("files", {}), dict)} if isinstance(steps, dict) else {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files.write_text(self.path, json.dumps({"hashes": self.hashes, "steps": self.steps}, indent=1))

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        cached = self.hashes.get(key)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2]
        digest = files.sha256_file(path)
        self.hashes[key] = [st.st_size, st.st_mtime_ns, digest]
        return digest

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


class _Runner:
    """The one place that decides skip-or-run: runs a step whose key or outputs changed, records it, counts it."""

    def __init__(self, state: _State, log: Callable[[str], None]):
        self.state = state
        self.log = log
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self._keys: dict[str, str] = {}

    def key(self, step: Step) -> str:
        if step.name not in self._keys:  # made when the step is first considered: its input files exist by then
            self._keys[step.name] = files.sha256_text(*(self._part(x) for x in step.inputs))
        return self._keys[step.name]

    def _part(self, x: Any) -> Any:
        if isinstance(x, Step):
            return self.key(x)
        if isinstance(x, Path):
            return self.state.sha256(x)
        if isinstance(x, list):
            return [self._part(y) for y in x]
        return x

    def run(self, step: Step) -> Any:
        """Skip ``step`` when done, else make its needs, run and record it; returns its state record."""
        if not step.recorded:
            return step.run()
        key = self.key(step)
        if step.name in self.ran or self.state.done(step.name, key, step.outputs):
            if not step.lazy:
                self.skipped.append(step.name)
            return self.state.steps[step.name]
        for need in step.needs:
            self.run(need)
        if step.message:
            self.log(step.message)
        self.state.record(step.name, key, step.outputs, **(step.run() or {}))
        self.ran.append(step.name)
        return self.state.steps[step.name]

    def run_all(self, steps: list[Step]) -> None:
        """Run every step in order; a lazy step no other step needed counts as skipped."""
        for step in steps:
            if not step.lazy:
                self.run(step)
        self.skipped += [s.name for s in steps if s.lazy and s.name not in self.ran]


# ---------------------------------------------------------------------------------------------- the job


def _imatrix_record(step: dict | None) -> dict | None:
    """Which engine computed the importance matrix, on what, and how fast (from the imatrix step's record)."""
    stats = (step or {}).get("stats") or {}
    keys = ("engine", "gguf", "chunks", "tokens", "seconds", "tokens_per_s", "entries")
    if not stats:
        return None
    record = {k: stats.get(k) for k in keys}
    if stats.get("device_map"):  # the torch engine placed by accelerate: where the modules ran
        record.update({k: stats.get(k) for k in ("device_map", "modules_per_device", "offloaded")})
    return record


@dataclass
class _Job:
    """One run's resolved inputs and paths, the steps made of them, and what the steps leave for the manifest."""

    cfg: PipelineConfig
    log: Callable[[str], None]
    state: _State
    quants: list[str]
    im_quants: list[str]
    base_dir: Path
    specs: list[LoraSpec]
    template: str | None              # Jinja source of cfg.template
    overrides: list[KVOverride]       # written into the intermediate GGUF (the template, the context length)
    name: str
    outdir: Path
    inter_type: str                   # BF16, F16 or F32
    inputs: dict
    warnings: list[str] = field(default_factory=list)
    mf: ModelfileResult | None = None
    audit: dict | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def intermediate(self) -> Path:
        return self.outdir / f"{self.name}-{self.inter_type}.gguf"

    @property
    def imatrix_path(self) -> Path:
        return self.outdir / "imatrix.gguf"

    @property
    def quant_files(self) -> list[tuple[str, bool, Path]]:
        """(type, made with the imatrix, file) of every quant, the Modelfile's default first."""
        jobs = [(t, False) for t in self.quants] + [(t, True) for t in self.im_quants]
        return [(t, im, self.outdir / f"{self.name}-{t}{'-im' if im else ''}.gguf") for t, im in jobs]

    def steps(self) -> list[Step]:
        cfg, inputs = self.cfg, self.inputs
        made = self.intermediate
        conv = Step("convert", self._convert, lazy=True, outputs=[made], message=f"merge + convert -> {made.name}",
                    inputs=("convert", __version__, inputs["base"], inputs["loras"], cfg.outtype.lower(), self.name,
                            cfg.ctx, self.template))
        steps = [conv]
        imatrix = None
        if cfg.imatrix:
            on_gguf = cfg.imatrix_engine == "llama"
            imatrix = Step("imatrix", self._imatrix, outputs=[self.imatrix_path], needs=[conv] if on_gguf else [],
                           inputs=("imatrix", conv, inputs["calibration"], cfg.imatrix_ctx, cfg.imatrix_chunks,
                                   cfg.imatrix_engine),
                           message=f"importance matrix on the merged model ({cfg.imatrix} calibration) -> "
                                   f"{self.imatrix_path.name}")
            steps.append(imatrix)
        for t, im, out in self.quant_files:
            steps.append(Step(f"quant:{out.name}", partial(self._quantize, t, im), outputs=[out], needs=[conv],
                              inputs=("quant", conv, t, imatrix if im else None),
                              message=f"quantize {t}{' with the imatrix' if im else ''} -> {out.name}"))
        steps.append(Step("modelfile", self._modelfile, recorded=False))
        if cfg.smoke:
            prompts = Path(cfg.smoke_prompts) if cfg.smoke_prompts else "default"
            steps += [Step(f"smoke:{out.name}", partial(self._smoke, out), message=f"smoke test {out.name}",
                           inputs=("smoke", out, prompts, cfg.system, cfg.template)) for *_, out in self.quant_files]
        if cfg.eval_text:
            parts = ("eval", conv, [out for *_, out in self.quant_files], inputs["eval_text"], cfg.eval_chunks)
            steps.append(Step("eval", self._eval, inputs=parts, needs=[conv],
                              message=f"quality against {made.name} on {cfg.eval_text}"))
        steps.append(Step("audit", self._audit, recorded=False, message="end-of-turn audit"))
        steps.append(Step("card", self._finish, recorded=False))
        return steps

    def _warn(self, warnings: list[str]) -> None:
        self.warnings.extend(warnings)
        for w in warnings:
            self.log(f"warning: {w}")

    def _convert(self) -> dict:
        res = convert(self.base_dir, self.intermediate, outtype=self.cfg.outtype.lower(), overrides=self.overrides,
                      progress=self.cfg.progress, name=self.name, loras=self.specs,
                      allow_nonfinite=self.cfg.allow_nonfinite)
        self._warn(res.warnings)
        return {"n_params": res.n_params, "pre_tokenizer": res.pre_tokenizer}

    def _imatrix(self) -> dict:
        cfg = self.cfg
        on_gguf = cfg.imatrix_engine == "llama"  # the intermediate GGUF, already merged: reused, memory-mapped
        im, stats = compute_imatrix(self.base_dir, calibration=cfg.imatrix, ctx=cfg.imatrix_ctx,
                                    chunks=cfg.imatrix_chunks, loras=self.specs, progress=cfg.progress,
                                    threads=cfg.threads, log=self.log, engine=cfg.imatrix_engine,
                                    gguf=self.intermediate if on_gguf else None,
                                    device_map=cfg.imatrix_device_map, max_memory=cfg.imatrix_max_memory,
                                    offload_folder=cfg.imatrix_offload_folder,
                                    work_dir=None if on_gguf else self.imatrix_path.parent)
        if stats.get("gguf"):
            stats["gguf"] = Path(stats["gguf"]).name
        write_gguf(im, self.imatrix_path)
        return {"stats": stats}

    def _quantize(self, qtype: str, with_imatrix: bool) -> None:
        imatrix = self.imatrix_path if with_imatrix else None
        quantize(self.intermediate, [qtype], self.outdir, imatrix=imatrix, threads=self.cfg.threads, force=True,
                 basename=self.name, imatrix_label=imatrix.name if imatrix else None)

    def _modelfile(self) -> None:
        """Modelfile + LM Studio preset: cheap and deterministic, so always made (files rewritten only on change)."""
        default = self.quant_files[0][2]
        self.mf = write_modelfile(default, self.outdir, gguf=default, source_dir=self.base_dir, template=self.template,
                                  system=self.cfg.system, ctx=self.cfg.ctx, name=self.name)
        self._warn(self.mf.warnings)

    def _audit(self) -> None:
        """The end-of-turn audit of the default quant, its Modelfile and preset (greedy replies when smoke-testing);
        written what metadata can fix is left to ``quantize audit --fix``; kept for the manifest and the card."""
        result = audit_signals(self.quant_files[0][2], generate=self.cfg.smoke, hf_dir=self.base_dir)
        self.audit = {**result.as_dict(), "unfixable": [m.problem for m in result.unfixable]}
        for m in result.mismatches:
            self._warn([f"end-of-turn audit: {m.problem} (fix: {m.fix})"])

    def _smoke(self, out: Path) -> dict:
        cfg = self.cfg
        prompts = load_prompts(cfg.smoke_prompts) if cfg.smoke_prompts else None
        report = run_smoke([out], prompts, threads=cfg.threads, template=self.template, system=cfg.system,
                           progress=cfg.progress)[0]
        return {"result": {**report.as_dict(), "file": out.name}}

    def _eval(self) -> dict:
        cfg = self.cfg
        report = evaluate(self.intermediate, [out for *_, out in self.quant_files],
                          files.read_text_file(cfg.eval_text, f"--eval {cfg.eval_text}"), chunks=cfg.eval_chunks,
                          threads=cfg.threads,
                          progress=cfg.progress)
        return {"result": {**report.as_dict(), "markdown": report.table(markdown=True)}}

    def _finish(self) -> None:
        """Drop the intermediate (unless kept), then write the model card and the manifest."""
        if not self.cfg.keep_intermediate and self.intermediate.exists():
            self.intermediate.unlink()
            self.state.steps.pop("convert", None)
            self.state.save()
        self.manifest = self._manifest()
        card_path = self.outdir / "README.md"
        files.write_text(card_path, model_card(self.manifest, self.base_dir))
        self.manifest["outputs"].append(self._entry(card_path, "model-card"))
        files.write_text(self.outdir / "manifest.json", json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")
        self.state.save()
        if self.audit and self.audit["unfixable"]:
            raise ForgeError("end-of-turn audit: " + "; ".join(self.audit["unfixable"]) + f" (see {card_path}); "
                             "not ready to publish")

    def _entry(self, path: Path, kind: str, extra: dict | None = None, n_params: int = 0) -> dict:
        entry = {"file": path.name, "bytes": path.stat().st_size, "sha256": self.state.sha256(path), "kind": kind,
                 **(extra or {})}
        if kind == "gguf" and n_params:
            entry["bits_per_weight"] = round(path.stat().st_size * 8 / n_params, 3)
        return entry

    def _output_files(self) -> list[tuple[Path, str, dict]]:
        mf = self.mf
        out = [(path, "gguf", {"type": t, "imatrix": im}) for t, im, path in self.quant_files]
        if self.cfg.keep_intermediate and self.intermediate.is_file():
            out.append((self.intermediate, "gguf", {"type": self.inter_type, "imatrix": False}))
        if self.cfg.imatrix:
            out.append((self.imatrix_path, "imatrix", {}))
        out += [(mf.modelfile, "modelfile", {}), (mf.preset, "lmstudio-preset", {})]
        if mf.model_yaml is not None:
            out.append((mf.model_yaml, "lmstudio-model-yaml", {}))
        if mf.legacy_preset:
            out.append((mf.legacy_preset, "lmstudio-legacy-preset", {}))
        return out

    def _manifest(self) -> dict[str, Any]:
        cfg, steps = self.cfg, self.state.steps
        default = self.quant_files[0][2]
        n_params = _gguf_params(default)  # from the file's tensor shapes: the same on every re-run
        smoke = {out.name: steps[f"smoke:{out.name}"]["result"] for *_, out in self.quant_files} if cfg.smoke else {}
        return {
            "tool": {"name": "gguf-forge", "version": __version__, "llama_cpp_python": runtime.version()},
            "name": self.name,
            "inputs": self.inputs,
            "options": {"quant": self.quants, "imatrix_quant": self.im_quants, "outtype": cfg.outtype.lower(),
                        "ctx": cfg.ctx, "template": cfg.template, "system": cfg.system,
                        "imatrix_ctx": cfg.imatrix_ctx if cfg.imatrix else None, "imatrix_chunks": cfg.imatrix_chunks,
                        "imatrix_engine": cfg.imatrix_engine if cfg.imatrix else None},
            "imatrix": _imatrix_record(steps.get("imatrix")) if cfg.imatrix else None,
            "parameters": n_params,
            "default": default.name,
            "stops": self.mf.stops,
            "system_prompt": self.mf.system,
            "smoke": smoke or None,
            "audit": self.audit,
            "eval": steps["eval"]["result"] if cfg.eval_text else None,
            "outputs": [self._entry(p, kind, extra, n_params) for p, kind, extra in self._output_files()],
        }


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
    quants, im_quants = _check_options(cfg)
    base_dir = resolve_model(cfg.base, what="--base")
    specs = [parse_lora_spec(x) for x in cfg.loras]
    lora_dirs = [resolve_model(s.path, what="--lora") for s in specs]
    template = None  # --template: written into the GGUF, the Modelfile and the preset, used by the smoke test
    if cfg.template:
        try:
            template = chat_template.load(cfg.template)
        except ForgeError as e:
            raise e.from_option("--template") from None
    ckpt = Checkpoint(base_dir)
    arch = for_config(ckpt.config)  # a base we cannot convert fails before anything is written
    _check_template_early(base_dir, lora_dirs, template, cfg.system)
    _check_calibration(cfg, base_dir, lora_dirs)
    name = cfg.name or default_name(base_dir, lora_dirs)
    outdir = _prepare_outdir(Path(cfg.outdir), [base_dir, *lora_dirs])

    overrides = []
    if template is not None:  # the template the fine-tune was trained with goes into the GGUF too
        overrides.append(KVOverride(keys.TOKENIZER.CHAT_TEMPLATE, "str", template))
    if cfg.ctx:
        overrides.append(KVOverride(keys.arch_key(keys.LLM.CONTEXT_LENGTH, arch.arch_name), "int", cfg.ctx))
    inter_type = resolve_outtype(cfg.outtype, ckpt).upper()  # auto: BF16 for bf16 checkpoints, else F16

    with files.exclusive_lock(outdir / STATE_DIR / "lock", str(outdir)):
        files.remove_leftovers(outdir)  # left by a killed run (a live writer's are kept)
        state = _State(outdir)
        log(f"hashing inputs ({base_dir}{''.join(', ' + str(d) for d in lora_dirs)})...")
        inputs = _hash_inputs(cfg, state, specs, lora_dirs, base_dir)
        state.save()
        job = _Job(cfg, log, state, quants, im_quants, base_dir, specs, template, overrides, name, outdir,
                   inter_type, inputs)
        runner = _Runner(state, log)
        runner.run_all(job.steps())
    return PipelineResult(outdir, name, job.manifest, runner.ran, runner.skipped, job.warnings)


def _types(value: str | list[str]) -> list[str]:
    return parse_types(value if isinstance(value, str) else ",".join(value))


def _check_options(cfg: PipelineConfig) -> tuple[list[str], list[str]]:
    """The quant and imatrix-quant types (canonical names); a contradiction or a missing file stops the run now."""
    quants = _types(cfg.quants)
    im_quants = _types(cfg.imatrix_quants) if cfg.imatrix_quants else []
    if im_quants and not cfg.imatrix:
        raise ForgeError("--imatrix-quant needs --imatrix CALIBRATION (a text or JSONL file, or 'default')")
    if cfg.imatrix and not cfg.imatrix_quants:
        im_quants = [t for t in quants if t not in NO_IMATRIX_BENEFIT]
    for t in quants:
        if t in NEEDS_IMATRIX:
            raise ForgeError(f"--quant {t} needs an importance matrix: put it in --imatrix-quant and give --imatrix")
    if cfg.outtype.lower() not in INTERMEDIATE_OUTTYPES:
        raise ForgeError(f"--outtype {cfg.outtype}: expected one of {', '.join(INTERMEDIATE_OUTTYPES)}")
    if cfg.name is not None:
        check_name(cfg.name)
    if cfg.eval_text is not None:
        if not Path(cfg.eval_text).is_file():
            raise ForgeError(f"--eval {cfg.eval_text}: no such file")
        files.read_text_file(cfg.eval_text, f"--eval {cfg.eval_text}")
    if cfg.imatrix and cfg.imatrix != DEFAULT_CALIBRATION:
        if not Path(cfg.imatrix).is_file():
            raise ForgeError(f"--imatrix {cfg.imatrix}: no such file (give a text or JSONL file, or 'default')")
        files.read_text_file(cfg.imatrix, f"--imatrix {cfg.imatrix}")
    if cfg.smoke and cfg.smoke_prompts:
        load_prompts(cfg.smoke_prompts)
    return quants, im_quants


def check_name(name: str) -> None:
    """The outputs' basename must be one visible file-name component: ``<name>-Q4_K_M.gguf`` stays in the folder
    and ``FROM ./<name>-...`` in the Modelfile points into it."""
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    if (not name.strip() or name in (".", "..") or any(c in name for c in separators) or "\0" in name
            or os.path.isabs(name) or name.startswith(".")):
        raise ForgeError(f"--name {name!r}: a name is one file-name component (no '/' or '\\', not '..', not "
                         "absolute, not hidden), e.g. --name my-model")


def _check_calibration(cfg: PipelineConfig, base_dir: Path, lora_dirs: list[Path]) -> None:
    """Read the ``--imatrix`` calibration as the imatrix step will (JSONL chats rendered with the chat template):
    a line it cannot use stops the run now, not after the merge and the conversion."""
    if not cfg.imatrix or cfg.imatrix == DEFAULT_CALIBRATION:
        return
    template = next((t for d in [*reversed(lora_dirs), base_dir] if (t := chat_template.from_hf_dir(d))), None)
    try:
        load_calibration(cfg.imatrix, template)
    except ForgeError as e:
        text = str(e)
        if text.startswith("--calibration"):  # the imatrix command's option; here the file came from --imatrix
            raise ForgeError("--imatrix" + text[len("--calibration"):], option="--imatrix") from None
        raise e.from_option("--imatrix") from None


def _prepare_outdir(outdir: Path, inputs: list[Path]) -> Path:
    """Create the output folder (a path under a file, or where nothing can be written, is a ForgeError); the
    folder of the base or of an adapter is refused (the card, Modelfile and GGUFs would land among its files)."""
    for folder in inputs:
        if outdir.is_dir() and os.path.samefile(outdir, folder):
            raise ForgeError(f"-o {outdir}: is the folder of an input model ({folder}); choose another output folder")
    try:
        return files.make_folder(outdir)
    except ForgeError as e:
        raise e.from_option("-o") from None


def _hash_inputs(cfg: PipelineConfig, state: _State, specs: list[LoraSpec], lora_dirs: list[Path],
                 base_dir: Path) -> dict[str, Any]:
    """The manifest's ``inputs``: every model, adapter and text the outputs depend on, with its sha256."""
    inputs: dict[str, Any] = {
        "base": {"model": cfg.base, "sha256": state.folder_hash(base_dir)},
        "loras": [{"adapter": s.path, "weight": s.weight, "sha256": state.folder_hash(d)}
                  for s, d in zip(specs, lora_dirs)],
    }
    if cfg.imatrix:
        text = (default_calibration_text() if cfg.imatrix == DEFAULT_CALIBRATION
                else files.read_text_file(cfg.imatrix, f"--imatrix {cfg.imatrix}"))
        inputs["calibration"] = {"file": cfg.imatrix, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    if cfg.eval_text:
        inputs["eval_text"] = {"file": str(cfg.eval_text), "sha256": state.sha256(Path(cfg.eval_text))}
    return inputs


def _check_template_early(base_dir: Path, lora_dirs: list[Path], template: str | None, system: str | None) -> None:
    """Translate the chat template once before the long steps: one we cannot reproduce stops the run now."""
    tok_dir = next((d for d in reversed(lora_dirs) if (d / "tokenizer_config.json").is_file()), base_dir)
    with tempfile.TemporaryDirectory(prefix="gguf-forge-check-") as tmp:
        target = Path(tmp) / "check.gguf"
        target.write_bytes(b"GGUF")
        write_modelfile(tok_dir, Path(tmp), gguf=target, template=template, system=system, name="check")


def _gguf_params(path: Path) -> int:
    reader = files.open_gguf(path)
    return sum(math.prod(int(d) for d in t.shape) for t in reader.tensors if not t.name.startswith("rope_freqs"))
