"""File helpers every layer uses: atomic writes, sha256, opening a GGUF, sizes, progress bars, the build cache.

One rule for output files: they are written under a hidden temporary name in the target's folder,
``.<name>.<pid>.partial``, and renamed over the final name only when complete. A failed or interrupted write
leaves no file under the final name, and a later run can tell a leftover from a live writer by the pid.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

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


# a write that fails for want of room: said in one line (the temporary file is removed, nothing is final)
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFREG: "a file"}


def check_target(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Refuse an output path that cannot be replaced by a rename: an existing FIFO, device, socket, or folder (for a
    file; a file, for a ``directory``), or a path under something that is not a folder. ForgeErrors naming
    ``path``; a missing path is fine.

    A symlink is followed for the check (a link to ``/dev/null`` is refused); a link to a regular file is replaced
    by the new file, as ``os.replace`` does.
    """
    path = Path(path)
    for folder in path.parents:  # the nearest existing ancestor must be a folder
        try:
            st = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise ForgeError(f"{path}: cannot reach {folder} ({e.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ForgeError(f"{path}: {folder} is not a folder")
        break
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise ForgeError(f"{path}: cannot write it ({e.strerror})") from None
    if stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode):
        return
    kind = _KINDS.get(stat.S_IFMT(mode), "something else")
    if directory:
        raise ForgeError(f"{path}: exists and is {kind}, not a folder")
    raise ForgeError(f"{path}: exists and is {kind}, not a regular file; refusing to replace it "
                     "(give the name of a new or ordinary file)")


def make_folder(folder: str | os.PathLike[str]) -> Path:
    """Create the output folder ``folder`` (and its parents) when about to write into it; one that is not a folder,
    cannot be created (under a file, in ``/proc``) or is not writable is a ForgeError naming it."""
    folder = Path(folder)
    check_target(folder, directory=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ForgeError(f"{folder}: cannot create the folder ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ForgeError(f"{folder}: not writable")
    return folder


def _raise_write_error(path: Path, e: OSError) -> NoReturn:
    """A full disk or quota while writing ``path`` is the user's to fix: one line; any other OSError as it is."""
    if e.errno in _NO_ROOM:
        raise ForgeError(f"{path}: {e.strerror or 'no space left'} while writing it; nothing was written under "
                         "that name (free some space, or write elsewhere, and run again)") from None
    raise e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it over ``path`` when the block succeeds.

    With ``directory``, the temporary path is an empty folder and an existing empty folder at ``path`` is
    replaced. On any exception (Ctrl-C included) the temporary file or folder is removed and ``path`` is left
    as it was. Checked before the block runs (ForgeErrors): :func:`check_target`, and that the temporary file can
    be created (a read-only or pseudo file system such as ``/proc``). A full disk (or a file-size limit) while
    the block writes is a ForgeError too. Example::

        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    """
    path = Path(path)
    check_target(path, directory=directory)
    tmp = partial_path(path)
    _remove(tmp)
    try:
        if directory:
            tmp.mkdir(parents=True)
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
    except FileNotFoundError:
        raise ForgeError(f"{path}: the folder {path.parent} does not exist") from None
    except OSError as e:
        raise ForgeError(f"{path}: cannot write in {path.parent} ({e.strerror})") from None
    try:
        yield tmp
        if directory and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(tmp, path)
    except OSError as e:
        _raise_write_error(path, e)
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
    for path in files:
        check_target(path)
    path = Path()
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
    except OSError as e:
        _raise_write_error(path, e)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return list(temps)


_PARTIAL_NAME = re.compile(r"\.(.+)\.(\d+)" + re.escape(PARTIAL_SUFFIX))


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the ``.*.partial`` files and folders a killed run left in ``folder``; returns what was removed.

    A temporary file whose writer (the pid in its name, ``.<name>.<pid>.partial``) is still running is another
    process's work in progress and is left alone.
    """
    gone = []
    for stale in folder.glob(f".*{PARTIAL_SUFFIX}"):
        m = _PARTIAL_NAME.fullmatch(stale.name)
        if m and _writer_alive(int(m.group(2)), stale):
            continue
        _remove(stale)
        gone.append(stale)
    return gone


def _writer_alive(pid: int, path: Path) -> bool:
    """Whether process ``pid`` may be the one writing ``path``: it runs, and (where Linux tells) it started before
    the file was last written, so a pid reused by a later process does not protect a dead writer's file."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        pass
    except OSError:
        return False
    started = _process_start(pid)
    try:
        written = path.lstat().st_mtime
    except OSError:
        return False
    return started is None or started <= written + 1


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from Linux's /proc; None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def read_text_file(path: str | os.PathLike[str], name: str | None = None) -> str:
    """An input text file (calibration, evaluation text, prompts, a template) read as UTF-8; missing, unreadable or
    not UTF-8 is a ForgeError naming it (as ``name`` when given, e.g. ``"--text notes.txt"``)."""
    name = name or str(path)
    try:
        if stat.S_ISCHR(os.stat(path).st_mode) or stat.S_ISBLK(os.stat(path).st_mode):  # /dev/zero never ends
            raise ForgeError(f"{name}: is a device, not a text file")
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ForgeError(f"{name}: no such file") from None
    except MemoryError:
        raise ForgeError(f"{name}: too large to read into memory") from None
    except UnicodeDecodeError as e:
        raise ForgeError(f"{name}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except OSError as e:
        raise ForgeError(f"{name}: cannot read it ({e.strerror or e})") from None


def check_not_an_input(out: str | os.PathLike[str], inputs: list[Path]) -> None:
    """Refuse an output path that is one of ``inputs`` or one of the files in an input folder (a model's weights,
    its config): writing it would destroy what the run reads. A GGUF already in a model's folder is an earlier
    output, not an input, and may be replaced."""
    out = Path(out)
    if not out.is_file():  # absent (or not a regular file: refused by check_target)
        return
    for item in inputs:
        in_folder = item.is_dir()
        for f in item.iterdir() if in_folder else [item]:
            with contextlib.suppress(OSError):
                if os.path.samefile(f, out) and not (in_folder and is_gguf(out)):
                    raise ForgeError(f"{out}: is one of this run's inputs; refusing to replace it, give another "
                                     "output file name")


def parse_json_line(line: str, where: str, expected: str) -> Any:
    """One line of a JSONL input (calibration chats, smoke prompts); a line that is not JSON, or is nested too deeply
    to read, is a ForgeError at ``where`` (``file:line``) saying what each line must be (``expected``)."""
    import json

    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ForgeError(f"{where}: not JSON ({e.msg}); {expected}") from None
    except RecursionError:
        raise ForgeError(f"{where}: JSON nested too deeply; {expected}") from None


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file that must hold an object (a config); anything else is a ForgeError naming the file."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise ForgeError(f"{path}: cannot read it as JSON ({e})") from None
    except RecursionError:
        raise ForgeError(f"{path}: cannot read it as JSON (nested too deeply)") from None
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
    """Whether ``path`` is a readable file starting with the GGUF magic (a FIFO or device is not read: no GGUF)."""
    if not os.path.isfile(path):
        return False
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


_VALUE_KINDS = {str: "text", int: "an integer", float: "a number", bool: "a boolean", list: "an array"}


def gguf_field(reader: Any, key: str, kind: type | None = None) -> Any:
    """The value of metadata ``key`` in an open GGUF (a str, number, bool or list), or None.

    Text that is not UTF-8, or (with ``kind``: str, int, float, bool or list) a value of another type, is a
    ForgeError naming the file and the key: a hand-made or damaged GGUF is refused in one line."""
    f = reader.fields.get(key)
    if f is None:
        return None
    where = f"{getattr(reader.data, 'filename', None) or 'GGUF'}: metadata {key}"
    try:
        value = f.contents()
    except UnicodeDecodeError:
        raise ForgeError(f"{where} is not UTF-8 text; re-convert the model") from None
    if kind is not None and not _has_kind(value, kind):
        raise ForgeError(f"{where} is {str(value)[:40]!r}, not {_VALUE_KINDS[kind]}; re-convert the model")
    return value


def _has_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


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


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, what: str) -> Iterator[None]:
    """Hold ``lock_file`` exclusively for the block (it records this process's pid), or refuse at once with
    ForgeError "``what`` is in use by PID n" when another process holds it. The lock goes with the process (a
    killed run does not leave ``what`` locked); where ``fcntl`` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            raise ForgeError(f"{what} is in use by PID {holder} (another run writes into it); wait for it to "
                             "finish, or use another folder" if holder else
                             f"{what} is in use by another process; wait for it to finish, or use another folder"
                             ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> int | None:
    """The pid a lock's holder wrote into it (None while it has not yet, e.g. the instant after it locked)."""
    for _ in range(10):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None
