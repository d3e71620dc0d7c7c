"""The importance matrix computed by llama.cpp itself, in-process, on a memory-mapped GGUF (``--engine llama``).

The weights stay in the page cache (the GGUF is memory-mapped), so the process holds only llama.cpp's context
(KV cache, compute buffers, one chunk's logits) in anonymous memory: an 8B model's imatrix runs in a few GB.

The statistic is collected as llama.cpp's ``llama-imatrix`` collects it: the context's evaluation callback
(``cb_eval``) is first *asked* about every graph node, says yes to the matrix multiplications whose weight is a
block tensor (``blk.*``; ``MUL_MAT`` and every ``MUL_MAT_ID``), and is then handed each of them after it ran, with
its float32 input (``src1``) in host memory. Per weight: the sum over tokens of x_j^2 per input column and the
token count; for ``MUL_MAT_ID`` (MoE experts) one row of sums and one count per expert, counting every
(token, selected expert) pair, as llama-imatrix stores them. Tensor names are the GGUF names llama-imatrix
records. Sums of squares are taken with numpy on the tensor's own memory (no copy); matmuls that share an input
(q/k/v, gate/up) sum it once, and only the first of them is asked for (every matmul asked for splits the graph
there): the others are credited with its sums when the scheduler asks about them.

Batching: one chunk of ``ctx`` tokens per decode, every token's logits requested (as llama-imatrix does: with
fewer outputs llama.cpp skips the last layer's FFN for the other tokens), ``n_ubatch`` = min(ctx, 512).
Unlike llama-imatrix, batches under 16 tokens are not ignored (every batch here is calibration data).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import ForgeError
from ..files import progress as progress_bar
from ..runtime import load_model
from .imatrix_file import IMatrix

#: llama-imatrix's physical batch
UBATCH = 512


class _Tensor(ctypes.Structure):
    """``struct ggml_tensor`` of the ggml bundled with llama-cpp-python 0.3.36 (checked against
    ``ggml_tensor_overhead()`` when the library is loaded)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


_OP_OFFSET = _Tensor.op.offset
_SRC_OFFSET = _Tensor.src.offset
_NAME_OFFSET = _Tensor.name.offset
_GGML_F32, _GGML_I32 = 0, 26
_GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type + padding
_HEADER_SIZE = _Tensor.extra.offset  # every field up to the name, the name included
_POINTER_SIZE = ctypes.sizeof(ctypes.c_void_p)
#: the name llama.cpp's graphs give the final norm, the output head's input (``cb(cur, "result_norm", -1)``)
_FINAL_NORM = b"result_norm\0"


class _Ggml:
    """The few ggml functions the collector needs, and the op codes of this ggml build."""

    _instance: "_Ggml | None" = None

    def __init__(self) -> None:
        import llama_cpp
        from llama_cpp import _ctypes_extensions as ext

        lib = ext.load_shared_library("ggml-base", Path(llama_cpp.__file__).parent / "lib")
        lib.ggml_op_name.restype = ctypes.c_char_p
        lib.ggml_op_name.argtypes = [ctypes.c_int]
        lib.ggml_tensor_overhead.restype = ctypes.c_size_t
        lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
        lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.restype = None
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        if lib.ggml_tensor_overhead() - _GGML_OBJECT_SIZE != ctypes.sizeof(_Tensor):
            raise ForgeError(f"--engine llama: the ggml in llama-cpp-python {llama_cpp.__version__} has another "
                             "tensor layout than the one gguf-forge reads; use --engine torch")
        ops = {}
        for i in range(200):
            name = lib.ggml_op_name(i)
            if name is None:
                break
            ops[name.decode()] = i
            if name == b"COUNT" or len(ops) > 150:
                break
        if "MUL_MAT" not in ops or "MUL_MAT_ID" not in ops:
            raise ForgeError("--engine llama: this ggml names no MUL_MAT op; use --engine torch")
        self.lib, self.mul_mat, self.mul_mat_id = lib, ops["MUL_MAT"], ops["MUL_MAT_ID"]

    @classmethod
    def get(cls) -> "_Ggml":
        if cls._instance is None:
            cls._instance = _Ggml()
        return cls._instance


def _weight_name(raw: bytes) -> str:
    """llama-imatrix's name filter: ``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight``."""
    name = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


class Collector:
    """The evaluation callback and what it gathered: per weight, float64 sums (n_mat, n_cols) and counts."""

    def __init__(self, process_output: bool = False) -> None:
        self.ggml = _Ggml.get()
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.error: BaseException | None = None
        self.interrupted = False  # set by run_llama's SIGINT handler: a Python exception cannot cross the callback
        self.calls = 0
        self.seconds = 0.0  # spent summing, for the benchmark
        self._cache_key: tuple | None = None
        self._cache_val: np.ndarray | None = None
        self._seen: set[str] = set()
        # dense matmuls: per node, keyed by the bytes of the node's and its input's ggml_tensor headers (op, shapes,
        # strides, data addresses, names), what _collect_dense needs: the input as an array, its weight's entry
        self._plans: dict[bytes, tuple] = {}
        self._last_input: tuple[bytes, np.ndarray] | None = None
        # the output head: nothing after the final norm (``result_norm``) feeds a block weight, so once a graph
        # has shown that (the first chunk runs whole), later graphs stop there and the head's matmul over the
        # vocabulary (a fifth of SmolLM2's work per token) is never computed; see the module docstring
        self.stop_at_norm = False
        self.stopped = 0  # graphs stopped at the final norm
        self._norm_passed = False  # this graph's final norm was asked about
        self._after_norm = False  # ... and a block weight's matmul came after it: never stop there
        self._norm_graphs = 0  # graphs that had a final norm
        from llama_cpp import llama_cpp as C

        # kept alive as long as the context may call it
        self.callback = C.ggml_backend_sched_eval_callback(lambda t, ask, ud: self._callback(t or 0, ask))

    def new_batch(self) -> None:
        """Forget the shared-input cache (a new graph reuses tensor addresses)."""
        self._cache_key, self._cache_val = None, None
        self._last_input = None
        self._seen.clear()

    def end_graph(self) -> None:
        """After a decode: from its graph, decide whether the next graphs may stop at the final norm (a final norm
        was seen and no block weight's matmul came after it; never with ``process_output``)."""
        if self._norm_passed:
            self._norm_graphs += 1
        self.stop_at_norm = (not self.process_output and self._norm_graphs > 0 and not self._after_norm
                             and (self.stop_at_norm or self._norm_passed))
        self._norm_passed = False

    def _wanted_name(self, name: str) -> bool:
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _callback(self, t: int, ask: bool) -> bool:
        if self.error is not None or self.interrupted:
            return False
        try:
            op = ctypes.c_int.from_address(t + _OP_OFFSET).value
            if op != self.ggml.mul_mat and op != self.ggml.mul_mat_id:
                if ctypes.string_at(t + _NAME_OFFSET, len(_FINAL_NORM)) != _FINAL_NORM:
                    return False
                if ask:  # the final norm: computed alone (a split) when this graph stops there
                    self._norm_passed = True
                    return self.stop_at_norm
                self.stopped += 1
                return False  # stop the graph: what follows is the output head only
            if ask:
                if self._norm_passed:
                    name = _weight_name(ctypes.string_at(ctypes.c_void_p.from_address(t + _SRC_OFFSET).value
                                                         + _NAME_OFFSET, 64))
                    if name.startswith("blk."):  # a block weight after the final norm: never stop there
                        self._after_norm = True
                        self.stop_at_norm = False
                if op == self.ggml.mul_mat_id:
                    return True
                src0, src1 = (ctypes.c_void_p * 2).from_address(t + _SRC_OFFSET)
                if ctypes.c_int.from_address(src1).value != _GGML_F32:
                    return False
                name = _weight_name(ctypes.string_at(src0 + _NAME_OFFSET, 64))
                if not self._wanted_name(name):
                    return False
                last = self._last_input
                if last is not None and name not in self._seen and ctypes.string_at(src1, _HEADER_SIZE) == last[0]:
                    # the input the last collected matmul of this graph had (k and v after q, up after gate): it
                    # was computed already and is unchanged, its sums are known; no graph split for this one
                    t0 = time.perf_counter()
                    self._collect_dense(t)
                    self.seconds += time.perf_counter() - t0
                    self.calls += 1
                    return False
                return True
            t0 = time.perf_counter()
            if op == self.ggml.mul_mat:
                self._collect_dense(t)
            else:
                self._collect(_Tensor.from_address(t), True)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            return True
        except BaseException as e:  # a bad value: stop this graph, raised after the decode returns
            self.error = e
            return False

    def _host_array(self, t: _Tensor, dtype: Any) -> np.ndarray:
        """A tensor's data as a 4-d numpy view (ne3, ne2, ne1, ne0), copied to host memory only when not there."""
        ne = [int(x) for x in t.ne]
        nb = [int(x) for x in t.nb]
        itemsize = np.dtype(dtype).itemsize
        if nb[0] != itemsize:
            raise ForgeError(f"imatrix: tensor {_weight_name(t.name)} has non-contiguous rows")
        nbytes = itemsize + sum((n - 1) * s for n, s in zip(ne, nb))
        if t.buffer and not self.ggml.lib.ggml_backend_buffer_is_host(t.buffer):
            host = np.empty(nbytes, dtype=np.uint8)
            self.ggml.lib.ggml_backend_tensor_get(ctypes.addressof(t), host.ctypes.data, 0, nbytes)
            base = host
        else:
            base = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(t.data))
        return np.ndarray(shape=(ne[3], ne[2], ne[1], ne[0]), dtype=dtype, buffer=base,
                          strides=(nb[3], nb[2], nb[1], nb[0]))

    def _squares(self, src1_addr: int, src1: _Tensor) -> np.ndarray:
        """x^2 of src1 as float32 (ne3, ne2, ne1, ne0); shared by consecutive matmuls on the same input."""
        key = (src1_addr, src1.data, tuple(src1.ne), tuple(src1.nb))
        if key == self._cache_key and self._cache_val is not None:
            return self._cache_val
        x = self._host_array(src1, np.float32)
        sq = np.square(x)
        self._cache_key, self._cache_val = key, sq
        return sq

    def _collect_dense(self, t: int) -> None:
        """A ``MUL_MAT``: per input column, the sum over tokens of x^2 (one einsum on the input's own memory, no
        temporary), shared with the next matmuls on the same input (q/k/v, gate/up). The per-node work (names,
        shapes, numpy views) is done once per graph node and reused while the node's header bytes stay the same
        (llama.cpp rebuilds the same graph for every chunk)."""
        src1 = ctypes.c_void_p.from_address(t + _SRC_OFFSET + _POINTER_SIZE).value
        in_key = ctypes.string_at(src1, _HEADER_SIZE)
        key = ctypes.string_at(t, _HEADER_SIZE) + in_key
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._dense_plan(_Tensor.from_address(t))
        if not plan:  # an input outside host memory: copied every time
            self._collect(_Tensor.from_address(t), False)
            return
        name, x, sums, counts, rows, slots = plan
        if name in self._seen:  # a weight seen again: a new graph, whose tensors may reuse the old addresses
            self.new_batch()
        self._seen.add(name)
        last = self._last_input
        if last is not None and last[0] == in_key:
            per_row = last[1]
        else:
            per_row = np.einsum("abij,abij->abj", x, x)  # (ne3, ne2, ne0) float32: the tokens of each slice
            if not np.isfinite(per_row.sum(dtype=np.float64)):  # squares: one inf/nan makes the total non-finite
                raise ForgeError(f"imatrix: non-finite activations at the input of {name}; the model (or its merge) "
                                 "is broken, or float16 overflowed (convert to bf16 or f32)")
            self._last_input = (in_key, per_row)
        if slots is None:
            sums[0] += per_row[0, 0]
        else:
            for (i3, i2), mat in slots:
                sums[mat] += per_row[i3, i2]
        counts += rows

    def _dense_plan(self, t: _Tensor) -> tuple:
        src0, src1 = _Tensor.from_address(t.src[0]), _Tensor.from_address(t.src[1])
        name = _weight_name(src0.name)
        if src1.type != _GGML_F32:
            raise ForgeError(f"imatrix: the input of {name} is not float32")
        n2, n3 = int(src0.ne[2]), int(src0.ne[3])
        n_mat = n2 * n3
        if src1.buffer and not self.ggml.lib.ggml_backend_buffer_is_host(src1.buffer):
            return ()
        sums, counts = self._entry(name, n_mat, int(src1.ne[0]))
        x = self._host_array(src1, np.float32)
        e3, e2 = int(src1.ne[3]), int(src1.ne[2])
        slots = None if (e3, e2, n_mat) == (1, 1, 1) else \
            [((i3, i2), (i3 % n3) * n2 + (i2 % n2)) for i3 in range(e3) for i2 in range(e2)]
        return name, x, sums, counts, int(np.prod(src1.ne[1:])) // n_mat, slots

    def _collect(self, t: _Tensor, is_id: bool) -> None:
        src0 = _Tensor.from_address(t.src[0])
        src1_addr = t.src[1]
        src1 = _Tensor.from_address(src1_addr)
        name = _weight_name(src0.name)
        if name in self._seen:  # a weight seen again: a new graph, whose tensors may reuse the old addresses
            self.new_batch()
        self._seen.add(name)
        if src1.type != _GGML_F32:
            raise ForgeError(f"imatrix: the input of {name} is not float32")
        sq = self._squares(src1_addr, src1)
        ne0 = int(src1.ne[0])
        if is_id:
            # ids: [n_expert_used, n_tokens] int32; src1: [ne0, ne11 (1 or n_expert_used), n_tokens]
            n_as = int(src0.ne[2])
            ids_t = _Tensor.from_address(t.src[2])
            ids = self._host_array(ids_t, np.int32)[0, 0]  # (n_tokens, n_used)
            n_tokens, n_used = ids.shape
            ne11 = int(src1.ne[1])
            if int(src1.ne[2]) != n_tokens or int(src1.ne[3]) != 1:
                raise ForgeError(f"imatrix: {name}: unexpected MUL_MAT_ID shapes")
            if ids.size and (ids.min() < 0 or ids.max() >= n_as):
                raise ForgeError(f"imatrix: {name}: an expert id out of range")
            sums, counts = self._entry(name, n_as, ne0)
            # routing[e, row, k]: how many of row's selections are expert e through src1 slot k (idx % ne11)
            routing = np.zeros((n_as, n_tokens, ne11), dtype=np.float32)
            rows = np.arange(n_tokens)
            for idx in range(n_used):
                np.add.at(routing, (ids[:, idx], rows, idx % ne11), 1.0)
            x2 = sq[0].reshape(n_tokens * ne11, ne0)  # (token row, slot) -> squares, as routing is laid out
            sums += routing.reshape(n_as, -1) @ x2
            counts += routing.reshape(n_as, -1).sum(axis=1)
        else:
            n2, n3 = int(src0.ne[2]), int(src0.ne[3])
            n_mat = n2 * n3
            sums, counts = self._entry(name, n_mat, ne0)
            per_row = sq.sum(axis=2, dtype=np.float32)  # (ne3, ne2, ne0): the tokens of each matrix slice
            if n_mat == 1:
                sums[0] += per_row.reshape(-1, ne0).sum(axis=0, dtype=np.float64)
            else:
                for i3 in range(per_row.shape[0]):
                    for i2 in range(per_row.shape[1]):
                        sums[(i3 % n3) * n2 + (i2 % n2)] += per_row[i3, i2]
            counts += int(np.prod(src1.ne[1:])) // n_mat
        if not np.isfinite(sums).all():
            raise ForgeError(f"imatrix: non-finite activations at the input of {name}; the model (or its merge) is "
                             "broken, or float16 overflowed (convert to bf16 or f32)")

    def _entry(self, name: str, n_mat: int, ne0: int) -> tuple[np.ndarray, np.ndarray]:
        sums = self.sums.get(name)
        if sums is None:
            sums = self.sums[name] = np.zeros((n_mat, ne0), dtype=np.float64)
            self.counts[name] = np.zeros(n_mat, dtype=np.float64)
        elif sums.shape != (n_mat, ne0):
            raise ForgeError(f"imatrix: inconsistent size for {name} ({sums.shape} vs {(n_mat, ne0)})")
        return sums, self.counts[name]

    def imatrix(self, datasets: list[str], chunk_count: int, chunk_size: int) -> IMatrix:
        im = IMatrix(datasets=datasets, chunk_count=chunk_count, chunk_size=chunk_size)
        for name in sorted(self.sums):
            im.sums[name] = self.sums[name].copy()
            im.counts[name] = self.counts[name].copy()
        return im


def run_llama(gguf_path: Path, tokenize: Callable[[Any], tuple[list[list[int]], str]], ctx: int,
              threads: int | None = None, progress: bool = True, process_output: bool = False,
              ) -> tuple[IMatrix, dict]:
    """Load ``gguf_path`` memory-mapped with the collector as its evaluation callback, get the chunks from
    ``tokenize(llm)`` and decode them one by one; returns the imatrix and run statistics."""

    collector = Collector(process_output=process_output)
    with _interrupts_to(collector):
        return _run(collector, gguf_path, tokenize, ctx, threads, progress)


@contextlib.contextmanager
def _interrupts_to(collector: Collector) -> Iterator[None]:
    """While llama.cpp decodes, Ctrl-C (and SIGTERM where a Python handler takes it, as the CLI's does) sets
    ``collector.interrupted``: the callback then stops the graph and the decode loop raises KeyboardInterrupt (an
    exception raised inside a ctypes callback would only be printed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        collector.interrupted = True

    signals = [signal.SIGINT] + [signal.SIGTERM] * callable(signal.getsignal(signal.SIGTERM))  # the CLI's: as Ctrl-C
    old = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, was in old.items():
            signal.signal(sig, was)


def _run(collector: Collector, gguf_path: Path, tokenize: Callable[[Any], tuple[list[list[int]], str]], ctx: int,
         threads: int | None, progress: bool) -> tuple[IMatrix, dict]:
    from llama_cpp import llama_cpp as C

    ubatch = min(ctx, UBATCH)
    llm = load_model(gguf_path, n_ctx=ctx, threads=threads, n_batch=ctx, n_ubatch=ubatch, flash_attn=True,
                     cb_eval=collector.callback)
    try:
        work, dataset = tokenize(llm)
        n_vocab = llm.n_vocab()
        for c in work:
            bad = next((t for t in c if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise ForgeError(f"{gguf_path}: calibration token {bad} is outside the GGUF's vocabulary "
                                 f"({n_vocab} tokens); was the GGUF made from another tokenizer?")
        batch = C.llama_batch_init(ctx, 0, 1)
        try:
            mem = C.llama_get_memory(llm.ctx)
            t0 = time.perf_counter()
            with progress_bar(len(work) * ctx, "imatrix", enabled=progress, unit="tok") as bar:
                for c in work:
                    if collector.interrupted:
                        raise KeyboardInterrupt
                    C.llama_memory_clear(mem, True)
                    collector.new_batch()
                    batch.n_tokens = len(c)
                    for i, tok in enumerate(c):
                        batch.token[i] = tok
                        batch.pos[i] = i
                        batch.n_seq_id[i] = 1
                        batch.seq_id[i][0] = 0
                        batch.logits[i] = 1
                    rc = C.llama_decode(llm.ctx, batch)
                    collector.end_graph()
                    if collector.interrupted:
                        raise KeyboardInterrupt
                    if collector.error is not None:
                        raise collector.error
                    if rc != 0:
                        raise ForgeError(f"{gguf_path}: llama.cpp could not evaluate a calibration chunk "
                                         f"(llama_decode returned {rc})")
                    bar.update(len(c))
            seconds = time.perf_counter() - t0
        finally:
            C.llama_batch_free(batch)
    finally:
        llm.close()
    if not collector.sums:
        raise ForgeError(f"{gguf_path}: llama.cpp ran no matrix multiplication on a block weight (blk.*); "
                         "nothing to collect")
    im = collector.imatrix([dataset], len(work), ctx)
    n_tok = len(work) * ctx
    return im, {"tokens": n_tok, "chunks": len(work), "seconds": seconds, "tokens_per_s": n_tok / seconds,
                "entries": len(im.sums), "device": "cpu", "engine": "llama", "callback_seconds": collector.seconds,
                "head_skipped": collector.stopped}
