"""``quantize publish``: upload a pipeline output folder to Hugging Face (or ModelScope).

The folder is what ``quantize merge-convert`` writes: ``manifest.json`` (``tool.name == "gguf-forge"``) lists
every output with its size and sha256. Each listed file is checked against the manifest, GGUFs bigger than the
hub's per-file limit are split into llama.cpp ``gguf-split`` shards (see :mod:`.gguf_split`), the repo is
created if needed, files already on the hub with the same content are skipped (so an interrupted upload
resumes), and the rest is uploaded in one commit through the hub's own client library.

The token comes from ``HF_TOKEN`` or huggingface_hub's login cache (``hf auth login``); for ModelScope from
``MODELSCOPE_API_TOKEN`` or its SDK's login cache. It is passed to the client library only and scrubbed from
every message we print.

Public surface: :func:`publish`, :class:`PublishPlan`, :class:`PlannedFile`, :func:`read_manifest`,
:data:`HUB_LIMITS`, :func:`parse_size`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ...errors import ForgeError
from .split import Shard, plan_split, split_gguf

#: per-file size limits of the hubs, in bytes (decimal units, as the hubs and llama.cpp's gguf-split use them)
HUB_LIMITS = {"hf": 50 * 1000**3, "modelscope": 50 * 1000**3}
HUB_NAMES = {"hf": "Hugging Face", "modelscope": "ModelScope"}
HUBS = {"hf": type("HF", (), {"description": "Hugging Face (huggingface_hub)"}),
        "modelscope": type("MS", (), {"description": "ModelScope (optional extra: gguf-forge[modelscope])"})}  # TODO
STAGING = ".publish-split"  # hidden folder inside OUTDIR holding the shards of split GGUFs until uploaded

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


@dataclass
class PlannedFile:
    """One file of the upload: where it comes from, where it goes and what happened to it.

    ``status`` is ``"upload"`` (planned, for a dry run), ``"uploaded"``, or ``"on hub"`` (skipped: the hub already
    holds the same content). ``sha256`` is ``None`` only for shards of a dry run (they are not written then).
    """

    source: str
    path_in_repo: str
    bytes: int
    sha256: str | None
    kind: str
    split_from: str | None = None
    status: str = "upload"


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

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``quantize publish --json``); it never holds the token."""
        return {**asdict(self), "total_bytes": self.total_bytes}

    def format(self) -> str:
        """The plan as an aligned text table with a one-line summary."""
        verb = "would upload to" if self.dry_run else "published to"
        lines = [f"{verb} {HUB_NAMES[self.hub]} {self.repo}{' (private)' if self.private else ''}"
                 + (f": {self.url}" if self.url else "")]
        width = max([len(f.path_in_repo) for f in self.files] + [4])
        for f in self.files:
            note = f"  (part of {f.split_from})" if f.split_from else ""
            lines.append(f"  {f.path_in_repo:<{width}}  {_human(f.bytes):>9}  {f.status}{note}")
        n_up = sum(f.status != "on hub" for f in self.files)
        done = "to upload" if self.dry_run else "uploaded"
        lines.append(f"{len(self.files)} files, {_human(self.total_bytes)}; {n_up} {done}, "
                     f"{len(self.files) - n_up} already on the hub"
                     + (f"; commit {self.commit}" if self.commit else ""))
        return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def parse_size(text: str) -> int:
    """``"50G"`` -> 50_000_000_000 (K/M/G/T are powers of 1000, as in llama.cpp's ``--split-max-size``)."""
    m = _SIZE.match(text)
    if not m:
        raise ForgeError(f"--max-file-size {text!r}: expected a size such as 20G, 500M or 1000000")
    return int(float(m.group(1)) * 1000 ** " KMGT".index((m.group(2) or " ").upper()))


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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
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


def _sha256(path: Path, bar: Any) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _checked_outputs(outdir: Path, manifest: dict[str, Any], progress: bool) -> list[tuple[Path, dict[str, Any]]]:
    """Every listed output as (path, entry), after checking it exists inside OUTDIR with the listed sha256."""
    from tqdm import tqdm

    root = outdir.resolve()
    found: list[tuple[Path, dict[str, Any]]] = []
    for entry in manifest["outputs"]:
        rel = entry["file"]
        path = (outdir / rel)
        if Path(rel).is_absolute() or ".." in Path(rel).parts or root not in path.resolve().parents:
            raise ForgeError(f"{outdir / 'manifest.json'}: output {rel!r} is outside the folder; re-run the pipeline")
        if not path.is_file():
            raise ForgeError(f"{path}: listed in manifest.json but missing; re-run the pipeline to recreate it")
        found.append((path, entry))
    total = sum(p.stat().st_size for p, _ in found)
    with tqdm(total=total, unit="B", unit_scale=True, desc="check sha256", disable=not progress,
              leave=False) as bar:
        for path, entry in found:
            if _sha256(path, bar) != entry["sha256"].lower():
                raise ForgeError(f"{path}: sha256 differs from manifest.json (modified after the pipeline ran); "
                                 "re-run the pipeline to recreate it")
    return found


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
    files.append(PlannedFile("manifest.json", "manifest.json", m.stat().st_size,
                             hashlib.sha256(m.read_bytes()).hexdigest(), "manifest"))
    return files, splits


def _write_shards(outdir: Path, plan: PublishPlan, splits: dict[str, list[Shard]], progress: bool) -> None:
    """Write the shards (reusing complete ones from an earlier, interrupted run) and fill in their sha256."""
    from tqdm import tqdm

    staging = outdir / STAGING
    for rel, shards in splits.items():
        src = outdir / rel
        dest = (staging / rel).parent
        record = dest / f".{Path(rel).name}.split.json"
        key = {"source": rel, "source_bytes": src.stat().st_size, "source_mtime_ns": src.stat().st_mtime_ns,
               "max_file_bytes": plan.max_file_bytes}
        sums: dict[str, str] | None = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            old = json.loads(record.read_text())
            if old["key"] == key and all((dest / s.name).stat().st_size == s.bytes for s in shards):
                sums = old["sha256"]
        if sums is None:
            paths = split_gguf(src, dest, plan.max_file_bytes, progress=progress)
            with tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True,
                      desc=f"hash shards of {Path(rel).name}", disable=not progress, leave=False) as bar:
                sums = {p.name: _sha256(p, bar) for p in paths}
            tmp = record.with_name(record.name + ".tmp")
            tmp.write_text(json.dumps({"key": key, "sha256": sums}))
            os.replace(tmp, record)
        for f in plan.files:
            if f.split_from == rel:
                f.sha256 = sums[Path(f.path_in_repo).name]


def _get_token(hub: str) -> str:
    if hub == "hf":
        from huggingface_hub import get_token

        token = get_token()
        how = "set HF_TOKEN or run `hf auth login` with a token that can write"
    else:
        _modelscope_api()  # a clear error when the client is not installed
        from modelscope_hub.config import get_default_config

        token = get_default_config().token or None  # MODELSCOPE_API_TOKEN or `modelscope login`'s cache
        how = "set MODELSCOPE_API_TOKEN or run `modelscope login` (an SDK token from modelscope.cn)"
    if not token:
        raise ForgeError(f"no {HUB_NAMES[hub]} token found: {how}")
    return token


def _scrub(text: str, token: str) -> str:
    """The message with the token (and any bearer credential) replaced by ***."""
    text = text.replace(token, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


@contextlib.contextmanager
def _hub_errors(token: str, repo: str, what: str) -> Iterator[None]:
    """Turn the client library's errors into one-line ForgeErrors that never contain the token."""
    try:
        yield
    except ForgeError:
        raise
    except Exception as e:  # the hub libraries raise HTTP, network and value errors of many kinds
        status = getattr(getattr(e, "response", None), "status_code", None) or getattr(e, "status_code", None)
        if status in (401, 403):
            raise ForgeError(f"{what} {repo}: the hub refused the token (HTTP {status}); use a token with write "
                             "access (HF_TOKEN or `hf auth login`)") from None
        chain = []
        c: BaseException | None = e
        while c is not None and len(chain) < 4:
            if getattr(c, "response", None) is not None:  # an HTTP error: its status and the hub's own message
                said = getattr(c, "server_message", None) or str(c).splitlines()[0]
                chain.append(f"HTTP {c.response.status_code}: {said}")
                break
            else:
                chain.append(f"{type(c).__name__}: {c}")
            c = c.__cause__ or c.__context__
        detail = " <- ".join(" ".join(_scrub(x, token).split())[:200] for x in chain)
        raise ForgeError(f"{what} {repo} failed ({detail}); re-run the same command to resume, files already on "
                         "the hub are skipped") from None


def _hf_upload(plan: PublishPlan, outdir: Path, token: str, progress: bool) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from huggingface_hub.utils.sha import git_hash

    repo = plan.repo
    api = HfApi(token=token)
    with _hub_errors(token, repo, "creating repo"):
        plan.url = str(api.create_repo(repo, private=plan.private, exist_ok=True, repo_type="model"))
    remote: dict[str, Any] = {}
    with _hub_errors(token, repo, "listing"):
        for entry in api.list_repo_tree(repo, recursive=True):
            if hasattr(entry, "size"):
                remote[entry.path] = entry
    for f in plan.files:
        r = remote.get(f.path_in_repo)
        if r is None or r.size != f.bytes:
            f.status = "upload"
        elif r.lfs is not None:
            f.status = "on hub" if r.lfs.sha256 == f.sha256 else "upload"
        else:
            f.status = "on hub" if r.blob_id == git_hash((outdir / f.source).read_bytes()) else "upload"
    todo = [f for f in plan.files if f.status != "on hub"]
    if not todo:
        return
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        ops = []
        for f in todo:
            op = CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(outdir / f.source))
            op.upload_info.sha256 = bytes.fromhex(f.sha256 or "")  # checked above; saves hashing again
            ops.append(op)
        # one file at a time, so an interruption keeps every file uploaded before it (the LFS storage holds
        # them and says so on the next run); then one commit with everything
        for f, op in zip(todo, ops):
            with _hub_errors(token, repo, f"uploading {f.path_in_repo} to"):
                api.preupload_lfs_files(repo, additions=[op])
        name = Path(plan.outdir).name
        with _hub_errors(token, repo, "committing to"):
            info = api.create_commit(repo, ops, commit_message=f"Upload {name} (gguf-forge)",
                                     commit_description="Files and sha256 as listed in manifest.json.")
        plan.commit = info.oid
        for f in todo:
            f.status = "uploaded"
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()


def _modelscope_api() -> Any:
    try:
        from modelscope_hub.api import HubApi
    except ImportError:
        raise ForgeError("--hub modelscope needs the ModelScope client: pip install 'gguf-forge[modelscope]'") from None
    return HubApi


class _ScrubToken(logging.Filter):
    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _scrub(record.getMessage(), self.token), None
        return True


@contextlib.contextmanager
def _modelscope_output(token: str, progress: bool) -> Iterator[None]:
    """While the ModelScope client runs: its "Upload Report" (printed to stdout, where it would corrupt
    ``--json``) is dropped, and its log lines go to stderr with the token scrubbed: warnings and errors only,
    and none with ``--no-progress`` (our own one-line error says what failed)."""
    from modelscope_hub.utils.logger import get_logger

    log = get_logger()  # the client's root logger, configured now so that it does not add its handler later
    saved = (log.handlers[:], log.level, log.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ScrubToken(token))
    handler.setFormatter(logging.Formatter("modelscope: %(levelname)s %(message)s"))
    log.handlers, log.propagate = ([handler] if progress else []), False
    log.setLevel(logging.WARNING if progress else logging.CRITICAL + 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.handlers, log.level, log.propagate = saved


def _modelscope_upload(plan: PublishPlan, outdir: Path, token: str, progress: bool) -> None:
    """Upload through ModelScope's own client (modelscope-hub), which hashes, skips what the hub already holds
    and resumes by itself. Endpoint: MODELSCOPE_ENDPOINT (default https://www.modelscope.cn)."""
    api = _modelscope_api()(token=token)
    repo = plan.repo
    with _hub_errors(token, repo, "creating repo"):
        if not api.repo_exists(repo, "model"):
            api.create_repo(repo, "model", visibility="private" if plan.private else "public")
    plan.url = f"{os.environ.get('MODELSCOPE_ENDPOINT', 'https://www.modelscope.cn').rstrip('/')}/models/{repo}"
    # one upload_folder per source folder: OUTDIR itself (unsplit files, manifest) and the shard staging folder
    by_root: dict[Path, list[PlannedFile]] = {}
    for f in plan.files:
        root = outdir / STAGING if f.split_from else outdir
        by_root.setdefault(root, []).append(f)
    for root, files in by_root.items():
        with _hub_errors(token, repo, "uploading to"), _modelscope_output(token, progress):
            api.upload_folder(repo, "model", root,
                              allow_patterns=[f.path_in_repo for f in files],
                              commit_message=f"Upload {Path(plan.outdir).name} (gguf-forge)",
                              disable_tqdm=not progress)
        for f in files:
            f.status = "uploaded"


def publish(outdir: Path, repo: str, *, hub: str = "hf", private: bool = False, dry_run: bool = False,
            max_file_bytes: int | None = None, progress: bool = True) -> PublishPlan:
    """Upload the pipeline output folder ``outdir`` to the model repo ``repo`` (``OWNER/NAME``) on ``hub``.

    Checks every file listed in ``manifest.json`` against its sha256, splits GGUFs over ``max_file_bytes``
    (default: the hub's limit, :data:`HUB_LIMITS`) into llama.cpp shards, creates the repo if needed, skips files
    the hub already holds with the same content, and uploads the rest in one commit. ``dry_run`` only plans:
    no token needed, nothing written or sent. Re-running after an interruption resumes.
    Raises :class:`ForgeError` (one line, never containing the token) on anything the user can fix.
    """
    outdir = Path(outdir)
    if hub not in HUB_LIMITS:
        raise ForgeError(f"--hub {hub!r}: expected one of {', '.join(HUB_LIMITS)}")
    _check_repo_id(repo)
    limit = HUB_LIMITS[hub]
    max_bytes = limit if max_file_bytes is None else int(max_file_bytes)
    if not 0 < max_bytes <= limit:
        raise ForgeError(f"--max-file-size {max_bytes:,}: must be above 0 and at most {HUB_NAMES[hub]}'s "
                         f"limit of {limit:,} bytes")
    manifest = read_manifest(outdir)
    outputs = _checked_outputs(outdir, manifest, progress)
    files, splits = _plan_files(outdir, outputs, max_bytes)
    plan = PublishPlan(str(outdir), repo, hub, private, dry_run, max_bytes, files)
    if dry_run:
        return plan
    token = _get_token(hub)
    if splits:
        _write_shards(outdir, plan, splits, progress)
    (_hf_upload if hub == "hf" else _modelscope_upload)(plan, outdir, token, progress)
    if splits:
        shutil.rmtree(outdir / STAGING, ignore_errors=True)
    return plan
