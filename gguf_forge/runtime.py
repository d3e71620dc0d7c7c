"""The llama.cpp runtime, through llama-cpp-python: the one place that loads a GGUF and listens to llama.cpp's log.

Public surface:

- :func:`load_model`: a memory-mapped ``llama_cpp.Llama``; a file llama.cpp cannot load is a one-line
  :class:`ForgeError` with llama.cpp's own reason.
- :class:`LlamaLog`: collect llama.cpp's log lines during a block (a load, a quantization) to name the reason of a
  failure. One process-wide callback is installed once and routes lines to every open capture, so captures nest
  and a quantization after a model load still hears llama.cpp's refusal.
- :func:`physical_cores`, :func:`use_extra_buffer_types` (the Intel AMX workaround), :func:`eog_tokens`,
  :func:`special_texts`, :func:`token_text`: facts about the machine and a loaded vocabulary.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterator

from .errors import ForgeError
from .files import is_gguf

# ---------------------------------------------------------------------------------------------- machine


def physical_cores() -> int:
    """Physical core count (llama.cpp's default thread count), capped by the CPUs this process may use."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            phys = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    cores.add((phys, line.split(":")[1].strip()))
        if cores:
            return max(1, min(len(cores), usable))
    except OSError:
        pass
    return usable


def use_extra_buffer_types() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (AMX, CPU_REPACK).

    On CPUs with Intel AMX (Xeon Sapphire Rapids and later; no laptop has it) llama.cpp 0.3.36's AMX buffer
    crashes (SIGSEGV in the AMX matmul) as soon as a batch holds more than one token (llama.cpp #20824), so
    they are off there; elsewhere llama.cpp's default (on) is kept. ``GGUF_FORGE_EXTRA_BUFTS=0|1`` decides.
    """
    env = os.environ.get("GGUF_FORGE_EXTRA_BUFTS")
    if env in ("0", "1"):
        return env == "1"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" not in line.split()
    except OSError:
        pass
    return True


# ---------------------------------------------------------------------------------------------- abandoned C calls

#: one event per llama.cpp quantization running in a worker thread (quant/quantize.py), set when its C call has
#: returned; here, in the core, so that the CLI's error boundary asks without importing the quantizer
QUANTIZER_CALLS: list[threading.Event] = []


def quantizer_running() -> bool:
    """Whether a llama.cpp quantization an interrupt abandoned is still inside its C call (in a worker thread).

    The process should then leave with ``os._exit``: a normal interpreter exit would finalize Python (and run
    C++ static destructors) under a thread that still uses them."""
    return any(not done.is_set() for done in QUANTIZER_CALLS)


# ---------------------------------------------------------------------------------------------- llama.cpp's log


class LlamaLog:
    """Collect llama.cpp's log lines while the ``with`` block runs (nothing is printed meanwhile).

    llama.cpp has one log callback per process. The first capture installs gguf-forge's callback and keeps it;
    every open capture receives every line, so nested or successive captures (a model load, then a quantization)
    never take the callback from each other.
    """

    _lock = threading.Lock()
    _open: list["LlamaLog"] = []
    _callback: Any = None  # kept alive for as long as llama.cpp holds the pointer: the process

    def __init__(self, limit: int = 10000) -> None:
        self.lines: list[str] = []
        self._limit = limit

    @classmethod
    def _install(cls) -> None:
        if cls._callback is not None:
            return
        import llama_cpp

        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", errors="replace")
            for capture in list(cls._open):
                if len(capture.lines) < capture._limit:
                    capture.lines.append(line)

        cls._callback = llama_cpp.llama_log_callback(callback)
        llama_cpp.llama_log_set(cls._callback, ctypes.c_void_p(0))

    def __enter__(self) -> "LlamaLog":
        with self._lock:
            self._install()
            self._open.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            if self in self._open:
                self._open.remove(self)

    def load_error(self) -> str | None:
        """llama.cpp's own words for a failed load (e.g. 'unknown model architecture: ...'), if it logged any."""
        for line in self.lines:
            if "error loading model:" in line:
                return line.split("error loading model:", 1)[1].strip()
        return None

    def last_error(self) -> str | None:
        """The last line that reports an error or failure (a quantizer's refusal), if any."""
        return next((m.strip() for m in reversed(self.lines) if "error" in m.lower() or "failed" in m.lower()), None)


# ---------------------------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _patched_defaults(function: str, **fields: Any) -> Iterator[None]:
    """Let ``llama_cpp.Llama`` build its parameters with ``fields`` set, by patching llama-cpp-python's
    ``function`` (``llama_model_default_params`` / ``llama_context_default_params``) while it runs: it exposes no
    option for ``use_extra_bufts`` or ``cb_eval``."""
    from llama_cpp import llama_cpp as C

    original = getattr(C, function)

    def patched():
        params = original()
        for k, v in fields.items():
            setattr(params, k, v)
        return params

    setattr(C, function, patched)
    try:
        yield
    finally:
        setattr(C, function, original)


class _NoChatFormatter:
    """Stands in for ``llama_chat_format.Jinja2ChatFormatter`` while a model loads: llama_cpp.Llama compiles every
    chat template in the metadata with its own Jinja environment, whose constant folding runs ``"a" * 10**10`` at
    compile time (a hostile GGUF takes all the memory before a line of ours runs). Templates are rendered by
    :mod:`gguf_forge.chat_template` alone; llama-cpp-python's chat completion is not used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def to_chat_handler(self) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise ForgeError("chat completion through llama-cpp-python is off; render with gguf_forge.chat_template")

        return refuse


@contextlib.contextmanager
def _without_chat_formatters() -> Iterator[None]:
    from llama_cpp import llama_chat_format

    original = llama_chat_format.Jinja2ChatFormatter
    llama_chat_format.Jinja2ChatFormatter = _NoChatFormatter
    try:
        yield
    finally:
        llama_chat_format.Jinja2ChatFormatter = original


def load_model(path: str | Path, n_ctx: int = 2048, threads: int | None = None, cb_eval: Any = None,
               **kwargs: Any) -> Any:
    """Load a GGUF with llama-cpp-python (memory-mapped), as a one-line error when it cannot.

    ``threads`` (default: physical cores) is used for generation and, unless ``n_threads_batch`` is given,
    for prompt processing too. ``cb_eval``: a ``ggml_backend_sched_eval_callback`` for the context (the imatrix
    collector); the caller keeps it alive.
    """
    import llama_cpp

    path = Path(path)
    if not path.is_file():
        raise ForgeError(f"{path}: no such file")
    if not is_gguf(path):
        raise ForgeError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    threads = threads or physical_cores()
    kwargs.setdefault("n_threads_batch", threads)
    with LlamaLog() as log:
        try:
            ctx_fields = {"cb_eval": cb_eval} if cb_eval is not None else {}
            with _patched_defaults("llama_model_default_params", use_extra_bufts=use_extra_buffer_types()), \
                    _patched_defaults("llama_context_default_params", **ctx_fields), _without_chat_formatters():
                return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False,
                                       **kwargs)
        except (ValueError, RuntimeError) as e:
            why = log.load_error()
            if why and "architecture" in why:
                raise ForgeError(f"{path}: the llama.cpp in llama-cpp-python {llama_cpp.__version__} cannot run it: "
                                 f"{why}") from None
            if why:
                raise ForgeError(f"{path}: llama.cpp cannot load it: {why}; the file may be truncated "
                                 "(re-download or re-convert it)") from None
            raise ForgeError(f"{path}: llama.cpp cannot load it ({e}); the file may be truncated or its "
                             "architecture unsupported") from None


# ---------------------------------------------------------------------------------------------- vocabulary


def eog_tokens(llm: Any) -> set[int]:
    """Every token llama.cpp ends generation on (``llama_vocab_is_eog``): eos, eot, <|im_end|>, <end_of_turn>..."""
    from llama_cpp import llama_cpp as C

    vocab = C.llama_model_get_vocab(llm.model)
    return {i for i in range(llm.n_vocab()) if C.llama_vocab_is_eog(vocab, i)}


def token_text(llm: Any, token: int) -> str:
    """The text of one token with special tokens rendered (``<|im_end|>``); empty for a negative id."""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""


def special_texts(llm: Any) -> list[str]:
    """Texts of the vocabulary's control and user-defined tokens (``<|im_start|>``, ``<|eot_id|>``...).

    User-defined tokens that are ordinary text (whitespace runs, HTML tags such as ``<h1>`` in Gemma's
    vocabulary) are left out: they may appear in a good reply.
    """
    from llama_cpp import llama_cpp as C

    vocab = C.llama_model_get_vocab(llm.model)
    out = []
    for i in range(llm.n_vocab()):
        attr = C.llama_vocab_get_attr(vocab, i)
        if not attr & (C.LLAMA_TOKEN_ATTR_CONTROL | C.LLAMA_TOKEN_ATTR_USER_DEFINED):
            continue
        text = (C.llama_vocab_get_text(vocab, i) or b"").decode("utf-8", errors="replace")
        if not text.strip():
            continue
        user_text = attr & C.LLAMA_TOKEN_ATTR_USER_DEFINED and not attr & C.LLAMA_TOKEN_ATTR_CONTROL
        if user_text and (not re.fullmatch(r"<\|\S+\|>|<[A-Za-z_][\w.-]*>", text)
                          or re.fullmatch(r"</?[a-z][a-z0-9]{0,9}>", text)):
            continue  # ordinary text, or an HTML tag
        out.append(text)
    return sorted(set(out), key=lambda t: (-len(t), t))


def version() -> str:
    """The installed llama-cpp-python's version (the llama.cpp it bundles), or 'unknown'."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version("llama_cpp_python")
    except Exception:  # pragma: no cover  (not installed as a distribution)
        return "unknown"
