"""``quantize publish``: upload a pipeline output folder to a model hub (:data:`.hubs.HUBS`).

The folder is what ``quantize merge-convert`` writes: ``manifest.json`` (``tool.name == "gguf-forge"``) lists
every output with its size and sha256 and keeps the end-of-turn audit. A folder without it is refused (no list of
what to upload, nothing to check it against). Each listed file is checked against the manifest, a folder whose
audit found a mismatch metadata cannot fix is refused (``--allow-audit-mismatch`` overrides), GGUFs bigger than the
hub's per-file limit are split into llama.cpp ``gguf-split`` shards (see :mod:`.split`), the repo is created if
needed, files already on the hub with the same content are skipped (so an interrupted upload resumes), and the
rest is uploaded through the hub's own client library.

The token comes from where the hub's client library looks for it (Hugging Face: ``HF_TOKEN`` or ``hf auth
login``; ModelScope: ``MODELSCOPE_API_TOKEN`` or ``modelscope login``). It is passed to the client library only
and scrubbed from every message we print.

Public surface: :func:`publish`, :class:`PublishPlan`, :func:`read_manifest`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ForgeError
from ...files import format_size, sha256_file, write_text
from ...files import progress as progress_bar
from ...modelfiles.audit import audit as audit_signals
from .base import Hub, PlannedFile
from .hubs import HUBS
from .split import Shard, plan_split, split_gguf

STAGING = ".publish-split"  # hidden folder inside OUTDIR holding the shards of split GGUFs until uploaded

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")


@dataclass
class PublishPlan:
    """What :func:`publish` did (or, with ``dry_run``, would do)."""

    outdir: str
    repo: str
    hub: str
    private: bool
    dry_run: bool
    max_file_bytes: int
    files: list[PlannedFile] = field(default_factory=list)
    url: str | None = None
    commit: str | None = None
    audit: str = ""  # the end-of-turn audit's verdict: where it comes from and what it found
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``quantize publish --json``); it never holds the token."""
        return {**asdict(self), "total_bytes": self.total_bytes}

    def format(self) -> str:
        """The plan as an aligned text table with a one-line summary."""
        verb = "would upload to" if self.dry_run else "published to"
        lines = [f"{verb} {HUBS[self.hub].title} {self.repo}{' (private)' if self.private else ''}"
                 + (f": {self.url}" if self.url else "")]
        if self.audit:
            lines.append(f"  {self.audit}")
        width = max([len(f.path_in_repo) for f in self.files] + [4])
        for f in self.files:
            note = f"  (part of {f.split_from})" if f.split_from else ""
            lines.append(f"  {f.path_in_repo:<{width}}  {format_size(f.bytes):>10}  {f.status}{note}")
        n_up = sum(f.status != "on hub" for f in self.files)
        done = "to upload" if self.dry_run else "uploaded"
        lines.append(f"{len(self.files)} files, {format_size(self.total_bytes)}; {n_up} {done}, "
                     f"{len(self.files) - n_up} already on the hub"
                     + (f"; commit {self.commit}" if self.commit else ""))
        return "\n".join(lines)


def _check_repo_id(repo: str) -> None:
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo:
        raise ForgeError(f"--repo {repo!r}: expected OWNER/NAME (letters, digits, '-', '_', '.'), "
                         "e.g. --repo my-user/MyModel-GGUF")


def read_manifest(outdir: Path) -> dict[str, Any]:
    """The folder's ``manifest.json``, or a :class:`ForgeError` saying it is not a pipeline output."""
    path = outdir / "manifest.json"
    if not outdir.is_dir():
        raise ForgeError(f"{outdir}: no such folder; give the folder written by `quantize merge-convert -o`")
    hint = "not a pipeline output; run `quantize merge-convert ... -o` first and publish that folder"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ForgeError(f"{outdir}: no manifest.json, {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ForgeError(f"{path}: unreadable ({e}), {hint}") from None
    tool = manifest.get("tool") if isinstance(manifest, dict) else None
    if not isinstance(tool, dict) or tool.get("name") != "gguf-forge":
        raise ForgeError(f"{path}: not written by gguf-forge, {hint}")
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list) or not outputs or not all(
            isinstance(o, dict) and isinstance(o.get("file"), str) and isinstance(o.get("sha256"), str)
            for o in outputs):
        raise ForgeError(f"{path}: 'outputs' must list files with 'file' and 'sha256'; re-run the pipeline")
    return manifest


def _checked_outputs(outdir: Path, manifest: dict[str, Any], progress: bool) -> list[tuple[Path, dict[str, Any]]]:
    """Every listed output as (path, entry), after checking it exists inside OUTDIR with the listed sha256."""
    root = outdir.resolve()
    found: list[tuple[Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    for entry in manifest["outputs"]:
        rel = entry["file"]
        path = (outdir / rel)
        try:
            real = path.resolve() if "\0" not in rel else None
        except (OSError, RuntimeError):  # a symlink loop
            real = None
        if Path(rel).is_absolute() or ".." in Path(rel).parts or real is None or root not in real.parents:
            raise ForgeError(f"{outdir / 'manifest.json'}: output {rel!r} is outside the folder; re-run the pipeline")
        if not path.is_file():
            raise ForgeError(f"{path}: listed in manifest.json but missing; re-run the pipeline to recreate it")
        if real in seen:
            raise ForgeError(f"{outdir / 'manifest.json'}: output {rel!r} is listed twice; re-run the pipeline")
        seen.add(real)
        found.append((path, entry))
    total = sum(p.stat().st_size for p, _ in found)
    with progress_bar(total, "check sha256", enabled=progress) as bar:
        for path, entry in found:
            if sha256_file(path, bar.update) != entry["sha256"].lower():
                raise ForgeError(f"{path}: sha256 differs from manifest.json (modified after the pipeline ran); "
                                 "re-run the pipeline to recreate it")
    return found


def _check_audit(outdir: Path, manifest: dict[str, Any], allow_mismatch: bool) -> tuple[str, list[str]]:
    """The end-of-turn audit's verdict for the folder, as (summary, warnings); refuses (ForgeError) a mismatch that
    metadata cannot fix unless ``allow_mismatch``.

    The pipeline's audit recorded in ``manifest.json`` is trusted: the outputs' sha256 (checked before this) are
    those of the files it audited, so a file changed since then was refused already. A manifest without an audit
    record (gguf-forge before the audit existed, or written by hand) gets the audit now, as ``quantize audit
    OUTDIR`` runs it: greedy replies of the default GGUF included. Fixable mismatches are warnings, as in the
    pipeline (``quantize audit --fix`` writes them)."""
    path = outdir / "manifest.json"
    record = manifest.get("audit")
    if isinstance(record, dict):
        source = "recorded in manifest.json"
        listed = [m for m in record.get("mismatches") or [] if isinstance(m, dict)]
        problems = [str(m.get("problem")) for m in listed]
        unfixable = [str(p) for p in record.get("unfixable") or []] or [
            str(m.get("problem")) for m in listed if m.get("fixable") is False]
        turn_end = record.get("turn_end")
    elif record is None:
        source = "run now: manifest.json records none"
        result = audit_signals(outdir, generate=True)
        unfixable = [m.problem for m in result.unfixable]
        problems = [m.problem for m in result.mismatches]
        turn_end = result.end
    else:
        raise ForgeError(f"{path}: 'audit' must be the pipeline's audit record; re-run the pipeline")
    if unfixable and not allow_mismatch:
        raise ForgeError(f"{path}: the end-of-turn audit ({source}) found a mismatch metadata cannot fix: "
                         f"{'; '.join(unfixable)}; ship the template the model was trained with (quantize "
                         "merge-convert --template) and re-run the pipeline (`quantize audit OUTDIR` shows every "
                         "signal), or pass --allow-audit-mismatch to publish it anyway")
    warnings = [f"end-of-turn audit: {p}" for p in problems if p not in unfixable]
    warnings += [f"end-of-turn audit: {p} (let through by --allow-audit-mismatch)" for p in unfixable]
    if not problems:
        verdict = f"no mismatch, turns end with {turn_end}" if turn_end else "no chat template to audit"
    else:
        verdict = f"{len(problems)} mismatch(es), {len(unfixable)} that metadata cannot fix"
    return f"end-of-turn audit ({source}): {verdict}", warnings


def _plan_files(outdir: Path, outputs: list[tuple[Path, dict[str, Any]]], max_bytes: int,
                ) -> tuple[list[PlannedFile], dict[str, list[Shard]]]:
    files: list[PlannedFile] = []
    splits: dict[str, list[Shard]] = {}
    for path, entry in outputs:
        rel = Path(entry["file"]).as_posix()
        size = path.stat().st_size
        kind = str(entry.get("kind") or "file")
        if size <= max_bytes:
            files.append(PlannedFile(rel, rel, size, entry["sha256"].lower(), kind))
            continue
        if path.suffix != ".gguf":
            raise ForgeError(f"{path}: {size:,} bytes, over the per-file limit of {max_bytes:,}, and only GGUF "
                             "files can be split; raise --max-file-size or leave the file out of the pipeline")
        shards = plan_split(path, max_bytes)
        splits[rel] = shards
        parent = Path(rel).parent.as_posix()
        for s in shards:
            target = s.name if parent == "." else f"{parent}/{s.name}"
            files.append(PlannedFile(f"{STAGING}/{target}", target, s.bytes, None, kind, split_from=rel))
    # the manifest itself travels too (not listed in its own outputs)
    m = outdir / "manifest.json"
    files.append(PlannedFile("manifest.json", "manifest.json", m.stat().st_size, sha256_file(m), "manifest"))
    return files, splits


def _write_shards(outdir: Path, plan: PublishPlan, splits: dict[str, list[Shard]], progress: bool) -> None:
    """Write the shards (reusing complete ones from an earlier, interrupted run) and fill in their sha256."""
    staging = outdir / STAGING
    for rel, shards in splits.items():
        src = outdir / rel
        dest = (staging / rel).parent
        record = dest / f".{Path(rel).name}.split.json"
        key = {"source": rel, "source_bytes": src.stat().st_size, "source_mtime_ns": src.stat().st_mtime_ns,
               "max_file_bytes": plan.max_file_bytes}
        sums: dict[str, str] | None = None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            old = json.loads(record.read_text())
            if old["key"] == key and all((dest / s.name).stat().st_size == s.bytes for s in shards):
                sums = old["sha256"]
        if sums is None:
            paths = split_gguf(src, dest, plan.max_file_bytes, progress=progress)
            with progress_bar(sum(p.stat().st_size for p in paths), f"hash shards of {Path(rel).name}",
                              enabled=progress) as bar:
                sums = {p.name: sha256_file(p, bar.update) for p in paths}
            write_text(record, json.dumps({"key": key, "sha256": sums}))
        for f in plan.files:
            if f.split_from == rel:
                f.sha256 = sums[Path(f.path_in_repo).name]


def publish(outdir: Path, repo: str, *, hub: str = "hf", private: bool = False, dry_run: bool = False,
            max_file_bytes: int | None = None, progress: bool = True, allow_audit_mismatch: bool = False,
            ) -> PublishPlan:
    """Upload the pipeline output folder ``outdir`` to the model repo ``repo`` (``OWNER/NAME``) on ``hub``.

    Checks every file listed in ``manifest.json`` against its sha256, splits GGUFs over ``max_file_bytes``
    (default: the hub's limit, :attr:`.Hub.limit`) into llama.cpp shards, creates the repo if needed, skips files
    the hub already holds with the same content, and uploads the rest. ``dry_run`` only plans: no token needed,
    nothing written or sent. Re-running after an interruption resumes.
    A folder whose end-of-turn audit (recorded in the manifest, or run now when none is) found a mismatch metadata
    cannot fix is refused before anything is sent, unless ``allow_audit_mismatch`` (:func:`_check_audit`).
    Raises :class:`ForgeError` (one line, never containing the token) on anything the user can fix.
    """
    outdir = Path(outdir)
    if hub not in HUBS:
        raise ForgeError(f"--hub {hub!r}: expected one of {', '.join(HUBS)}")
    hub_type = HUBS[hub]
    _check_repo_id(repo)
    limit = hub_type.limit
    max_bytes = limit if max_file_bytes is None else int(max_file_bytes)
    if not 0 < max_bytes <= limit:
        raise ForgeError(f"--max-file-size {max_bytes:,}: must be above 0 and at most {hub_type.title}'s "
                         f"limit of {limit:,} bytes")
    manifest = read_manifest(outdir)
    outputs = _checked_outputs(outdir, manifest, progress)
    verdict, warnings = _check_audit(outdir, manifest, allow_audit_mismatch)
    files, splits = _plan_files(outdir, outputs, max_bytes)
    plan = PublishPlan(str(outdir), repo, hub, private, dry_run, max_bytes, files, audit=verdict, warnings=warnings)
    if dry_run:
        return plan
    client = hub_type.connect()
    if splits:
        _write_shards(outdir, plan, splits, progress)
    _upload(client, plan, outdir, progress)
    if splits:
        shutil.rmtree(outdir / STAGING, ignore_errors=True)
    return plan


def _upload(client: Hub, plan: PublishPlan, outdir: Path, progress: bool) -> None:
    """Create the repo, skip what the hub already holds, upload the rest (no commit when nothing is left)."""
    plan.url = client.create_repo(plan.repo, plan.private)
    client.check_existing(plan.repo, plan.files, outdir)
    todo = [f for f in plan.files if f.status != "on hub"]
    if not todo:
        return
    plan.commit = client.upload(plan.repo, todo, outdir, f"Upload {Path(plan.outdir).name} (gguf-forge)", progress)
    for f in todo:
        f.status = "uploaded"
