"""Keeping a pipeline output folder's ``manifest.json`` true after ``quantize audit OUTDIR --fix`` rewrote files.

The manifest lists every output with its sha256 (``quantize publish`` refuses a file that no longer matches) and
keeps the end-of-turn audit (``publish`` refuses a mismatch metadata cannot fix). The fixes ``quantize audit --fix``
writes (the GGUF's eot id, Modelfile / preset stops) are the ones the pipeline's audit asks for, so the folder stays
publishable: the rewritten files' entries get their new size and sha256, the fixed mismatches leave the audit record
(what was written is kept under ``audit.fixed``) and the model card's audit paragraph and files table follow.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable

from ... import files
from .card import _audit_text, _files_table


def refresh_after_fix(outdir: Path, rewritten: Iterable[Path], fixed: list[str], written: list[str]) -> Path | None:
    """Update ``outdir/manifest.json`` (a gguf-forge pipeline output; anything else: None, nothing touched) after
    the files ``rewritten`` were changed to fix the mismatches whose problems are ``fixed`` (``written``: what was
    written, for the record). Returns the manifest's path when it was updated."""
    path = Path(outdir) / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or (manifest.get("tool") or {}).get("name") != "gguf-forge" \
            or not isinstance(manifest.get("outputs"), list):
        return None
    old = copy.deepcopy(manifest)
    root = Path(outdir).resolve()
    by_path = {(root / str(e.get("file"))).resolve(): e for e in manifest["outputs"] if isinstance(e, dict)}
    changed = False
    for p in rewritten:
        entry = by_path.get(Path(p).resolve())
        if entry is not None:
            entry["bytes"], entry["sha256"] = Path(p).stat().st_size, files.sha256_file(p)
            changed = True
    record = manifest.get("audit")
    if isinstance(record, dict) and isinstance(record.get("mismatches"), list):
        left = [m for m in record["mismatches"] if not (isinstance(m, dict) and m.get("problem") in fixed)]
        if len(left) != len(record["mismatches"]):
            record["mismatches"] = left
            record["ok"] = not left
            record["fixed"] = [*(record.get("fixed") or []), *written]
            changed = True
    if not changed:
        return None
    card = next((e for e in manifest["outputs"] if isinstance(e, dict) and e.get("kind") == "model-card"), None)
    card_path = (root / str(card["file"])) if card else None
    if card_path is not None and card_path.is_file():
        text = card_path.read_text(encoding="utf-8")
        new = text
        for part in (_audit_text, _files_table):
            try:
                before, after = part(old), part(manifest)
            except (KeyError, TypeError, ValueError, AttributeError):  # a manifest edited by hand: card left as is
                continue
            if before and before != after:
                new = new.replace(before, after)
        if new != text:
            files.write_text(card_path, new)
            card["bytes"], card["sha256"] = card_path.stat().st_size, files.sha256_file(card_path)
    files.write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path
