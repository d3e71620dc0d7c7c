"""The models a server answers for: found from the command line's paths, loaded on first use, one request per
session at a time."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ForgeError
from ...files import is_gguf
from ..chat import ChatSession


def find_models(paths: list[Path]) -> dict[str, Path]:
    """Model id -> GGUF for each ``PATH``: a GGUF file (id: its name without ``.gguf``), or a pipeline output folder
    (every GGUF its ``manifest.json`` lists, else every ``*.gguf`` in it). Ids must be unique."""
    out: dict[str, Path] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = _folder_ggufs(path)
            if not files:
                raise ForgeError(f"{path}: no GGUF files in this folder")
        elif path.is_file():
            if not is_gguf(path):
                raise ForgeError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
            files = [path]
        else:
            raise ForgeError(f"{path}: no such file or folder")
        for f in files:
            name = f.name[:-5] if f.name.lower().endswith(".gguf") else f.name
            if name in out and out[name].resolve() != f.resolve():
                raise ForgeError(f"{f}: two models would be named {name!r} ({out[name]} too); serve one of them")
            out[name] = f
    return out


def _folder_ggufs(folder: Path) -> list[Path]:
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            names = [o["file"] for o in data.get("outputs", []) if isinstance(o, dict) and o.get("kind") == "gguf"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ForgeError(f"{manifest}: not a readable pipeline manifest") from None
        files = [folder / n for n in names if (folder / n).is_file() and is_gguf(folder / n)]
        if files:
            return files
    return sorted(p for p in folder.glob("*.gguf") if p.is_file() and is_gguf(p))


@dataclass
class Slot:
    """One session (one llama.cpp context and KV cache) of a model; ``session`` is None until first used."""

    index: int
    session: ChatSession | None = None


@dataclass
class Model:
    id: str
    path: Path
    slots: list[Slot]
    free: asyncio.Queue  # of Slot
    busy: int = 0
    waiting: int = 0
    created: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelPool:
    """The models served, each with ``parallel`` slots (a request holds one for its whole generation; the others
    wait their turn in order). A slot's session is loaded by the first request it serves, memory-mapped (the
    slots of one model share the file's pages)."""

    def __init__(self, models: dict[str, Path], *, ctx: int = 4096, threads: int | None = None, parallel: int = 1,
                 template: str | None = None, system: str | None = None) -> None:
        self.paths = dict(models)
        self.ctx, self.threads, self.parallel = ctx, threads, parallel
        self.template, self.system = template, system
        self.models: dict[str, Model] = {}
        self.stopping = threading.Event()  # set on shutdown: every generation stops at its next token
        self.running: set[threading.Thread] = set()  # generations running (a model is never freed under one)

    def start(self) -> None:
        """Create the queues (inside the server's event loop)."""
        for mid, path in self.paths.items():
            free: asyncio.Queue = asyncio.Queue()
            slots = [Slot(i) for i in range(self.parallel)]
            for s in slots:
                free.put_nowait(s)
            self.models[mid] = Model(mid, path, slots, free, created=int(path.stat().st_mtime))

    def get(self, model_id: str) -> Model | None:
        return self.models.get(model_id)

    def session(self, model: Model, slot: Slot) -> ChatSession:
        """The slot's session, loaded now if this is its first request (called in the generation thread)."""
        if slot.session is None:
            slot.session = ChatSession(model.path, system=self.system, ctx=self.ctx, threads=self.threads,
                                       max_tokens=self.ctx, template=self.template)
        return slot.session

    def status(self) -> list[dict[str, Any]]:
        return [{"id": m.id, "file": str(m.path), "slots": len(m.slots),
                 "loaded": sum(s.session is not None for s in m.slots), "busy": m.busy, "queued": m.waiting}
                for m in self.models.values()]

    def close(self, wait: float = 60.0) -> None:
        """Stop every generation (at its next token; a prompt being evaluated finishes first), then free the
        models. A session whose thread is still running after ``wait`` seconds is left to the process's exit."""
        self.stopping.set()
        for t in list(self.running):
            t.join(wait)
        running = {t.name for t in self.running if t.is_alive()}
        for m in self.models.values():
            for s in m.slots:
                if s.session is not None and f"generate-{m.id}-{s.index}" not in running:
                    s.session.close()
                    s.session = None
