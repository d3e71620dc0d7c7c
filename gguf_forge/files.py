"""File helpers every layer uses: atomic writes, sha256, opening a GGUF, sizes, progress bars, the build cache.

One rule for output files: they are written under a hidden temporary name in the target's folder,
``.<name>.<pid>.partial``, and renamed over the final name only when complete. A failed or interrupted write
leaves no file under the final name, and a later run can tell a leftover from a live writer by the pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ForgeError

PARTIAL_SUFFIX = ".partial"


# ---------------------------------------------------------------------------------------------- atomic writes


def partial_path(path: str | os.PathLike[str]) -> Path:
    """The temporary name ``path`` is written under before the rename: ``.<name>.<pid>.partial`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it over ``path`` when the block succeeds.

    With ``directory``, the temporary path is an empty folder and an existing empty folder at ``path`` is
    replaced. On any exception (Ctrl-C included) the temporary file or folder is removed and ``path`` is left
    as it was. Example::

        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    """
    path = Path(path)
    tmp = partial_path(path)
    _remove(tmp)
    if directory:
        tmp.mkdir(parents=True)
    try:
        yield tmp
        if directory and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> bool:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns False, touching nothing (mtime included), when the
    file already holds exactly that text. ``mode`` defaults to an ordinary file's (0666 less the umask)."""
    return write_files({Path(path): text}, mode=mode) == [Path(path)]


def write_files(files: dict[Path, str | bytes], *, mode: int | None = None) -> list[Path]:
    """Write several files: each under its temporary name first, then all renamed; nothing final on failure.

    Files that already hold exactly their content are left alone. Returns the paths that were (re)written.
    """
    temps: dict[Path, Path] = {}
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        for path, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            path = Path(path)
            with contextlib.suppress(OSError):
                if path.is_file() and path.read_bytes() == data:
                    continue
            tmp = partial_path(path)
            temps[path] = tmp
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return list(temps)


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the ``.*.partial`` files and folders a killed run left in ``folder``; returns what was removed."""
    gone = []
    for stale in folder.glob(f".*{PARTIAL_SUFFIX}"):
        _remove(stale)
        gone.append(stale)
    return gone


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file that must hold an object (a config); anything else is a ForgeError naming the file."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise ForgeError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ForgeError(f"{path}: expected a JSON object")
    return data


# ---------------------------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike[str], progress: Callable[[int], Any] | None = None) -> str:
    """Hex sha256 of a file's bytes, read in 16 MiB blocks; ``progress(n)`` is told each block's size."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return h.hexdigest()


def sha256_text(*parts: Any) -> str:
    """Hex sha256 of ``parts`` as canonical JSON (a key over settings and hashes)."""
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- GGUF


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable file starting with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def open_gguf(path: str | os.PathLike[str]) -> Any:
    """A ``gguf.GGUFReader`` (memory-mapped) on ``path``; a missing, truncated or foreign file is a ForgeError."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ForgeError(f"{path}: no such file")
    if not is_gguf(path):
        raise ForgeError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError, struct errors, IndexError... on a damaged file
        raise ForgeError(f"{path}: cannot read it as GGUF ({type(e).__name__}: {e}); the file may be truncated "
                         "(re-download or re-convert it)") from None


def gguf_field(reader: Any, key: str) -> Any:
    """The value of metadata ``key`` in an open GGUF (a str, number, bool or list), or None."""
    f = reader.fields.get(key)
    return None if f is None else f.contents()


# ---------------------------------------------------------------------------------------------- sizes

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"5GB"``/``"5G"`` -> 5×10⁹ bytes (powers of 1000, as llama-gguf-split reads them); ``"5GiB"`` -> 5×2³⁰.

    Raises ValueError naming the accepted forms; callers add which option it came from.
    """
    m = _SIZE.fullmatch(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size; expected e.g. 50G, 5GB, 500MB or 2GiB")
    unit = "_KMGT".index(m.group(2).upper() or "_")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** unit)


def format_size(n: float) -> str:
    """Bytes in binary units, as llama.cpp prints them: ``1.5 MiB``, ``512 B``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- progress


def progress(total: float | None, desc: str, *, enabled: bool = True, unit: str = "B", **kwargs: Any) -> Any:
    """A tqdm bar that vanishes when done; a no-op when disabled. Bytes are shown in KiB/MiB, tokens and weights in
    k/M; counts of a few things (``unit="chunk"``, ``"prompt"``) as plain numbers. ``kwargs`` override tqdm's options.
    """
    from tqdm import tqdm

    options = {"unit_scale": unit not in ("chunk", "prompt", "file"), "unit_divisor": 1024 if unit == "B" else 1000,
               "leave": False, **kwargs}
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, **options)


# ---------------------------------------------------------------------------------------------- build cache


def cache_dir() -> Path:
    """Where built models and fixtures are cached (``$GGUF_FORGE_CACHE``, default ``~/.cache/gguf-forge``)."""
    root = os.environ.get("GGUF_FORGE_CACHE") or Path.home() / ".cache" / "gguf-forge"
    return Path(root)


def build_cached(dest: Path, build: Callable[[Path], None]) -> Path:
    """Return the folder ``dest``, made once by ``build(tmp)`` in a hidden folder beside it and renamed.

    An interrupted build leaves only the hidden folder (removed by the next try). Concurrent builders (the
    processes of a parallel test run, two `quantize demo`s) wait for each other's lock, so the folder is built
    once; without ``fcntl`` they each build and the first rename wins.
    """
    if dest.is_dir():
        return dest
    with build_lock(dest):
        if dest.is_dir():  # built by another process while this one waited
            return dest
        try:
            with atomic_path(dest, directory=True) as tmp:
                build(tmp)
        except OSError:
            if not dest.is_dir():  # another builder's folder arrived first: keep it
                raise
        return dest


@contextlib.contextmanager
def build_lock(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``dest``'s build (so parallel test processes build a fixture once, not twice).

    A lock file beside ``dest``; where ``fcntl`` is missing (Windows) builders simply race, which is still safe."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(dest.parent / f".{dest.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
