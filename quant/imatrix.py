"""Compute an importance matrix on the (fine-tuned) model: llama.cpp's own statistic, two engines.

- ``llama`` (default): llama.cpp in-process on a memory-mapped GGUF (:mod:`.imatrix_llama`), the weights in
  the page cache, not in the process's memory: a Hugging Face folder (adapters merged) is first converted,
  streaming, to a temporary F16 GGUF (bf16 when a weight overflows float16), removed afterwards; a GGUF is used
  as it is. ``merge-convert --imatrix`` hands it the intermediate GGUF it already wrote.
- ``torch``: the Hugging Face model loaded with transformers (float32 on the CPU, bfloat16 on CUDA), hooks on
  every block linear layer; the one for ``--device cuda``. Whole on one device, or placed by accelerate
  (:mod:`.placement`: ``--device-map``, ``--max-memory``, ``--offload-folder``; ``auto`` on CUDA): several GPUs, and
  CPU/disk offload when the model does not fit, each hook collecting where its module runs.

The statistic is llama.cpp's ``llama-imatrix`` one: for every matmul weight inside the blocks, the sum
over tokens of x_j^2 for each input column j, and the number of tokens. Calibration text is tokenized
with the model's tokenizer, cut into chunks of ``ctx`` tokens with BOS as each chunk's first token (when
the tokenizer adds BOS), exactly as llama.cpp chunks it. JSONL chat data (OpenAI ``messages`` or ShareGPT
``conversations``) is rendered through the model's chat template first. LoRA adapters are merged on the fly
(the same streaming merge as ``convert --lora``) while the weights are loaded.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import chat_template
from ..convert import Checkpoint, LoraSpec, NonFiniteError, arch_for_config, convert, merged_source, resolve_model
from ..convert.hf_writer import write_hf_checkpoint
from ..errors import ForgeError
from ..files import cache_dir, is_gguf, parse_json_line, read_text_file
from ..files import progress as progress_bar
from .imatrix_file import IMatrix
from .imatrix_llama import run_llama
from .placement import Placement, check_devices, execution_device, from_pretrained_kwargs, resolve, summary

DEFAULT_CALIBRATION = "default"
#: ``--engine`` choices: llama.cpp on a memory-mapped GGUF (memory-bounded), or the whole model in torch
ENGINES = ("llama", "torch")


def default_calibration_text() -> str:
    """The multilingual calibration text shipped with gguf-forge (Chinese, English, code)."""
    return resources.files("gguf_forge.quant").joinpath("data/calibration.txt").read_text(encoding="utf-8")


def load_calibration(spec: str, template: str | None, *, bos_token: str = "", eos_token: str = "") -> tuple[str, str]:
    """(text, dataset name) from ``default``, a .txt file or a JSONL chat file (each chat rendered with the chat
    ``template``, as the model sees a conversation: no generation prompt). A file that is not UTF-8, or a JSONL line
    that is not a chat, is a ForgeError naming the file and line."""
    if spec == DEFAULT_CALIBRATION:
        return default_calibration_text(), "gguf-forge default calibration"
    path = Path(spec)
    if not path.is_file():
        raise ForgeError(f"--calibration {spec}: no such file (or use 'default')")
    raw = read_text_file(path, f"--calibration {path}")
    if path.suffix.lower() not in (".jsonl", ".json"):
        return raw, path.name
    texts = []
    for i, line in enumerate(raw.split("\n"), 1):  # "\n" only: a JSON string may hold U+2028 and the like
        if not line.strip():
            continue
        where = f"--calibration {path}:{i}"
        msgs = _chat_messages(line, where)
        if template is None:
            raise ForgeError(f"--calibration {path}: chat data needs a chat template, and the model has none")
        try:
            texts.append(chat_template.render(template, msgs, add_generation_prompt=False, bos_token=bos_token,
                                              eos_token=eos_token))
        except ForgeError as e:
            raise ForgeError(f"{where}: {e}") from None
    return "\n".join(texts), path.name


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_CHAT_SHAPE = ('a JSON object with "messages" (a list of {"role", "content"} objects) or "conversations" '
               '(ShareGPT: a list of {"from", "value"} objects)')


def _chat_messages(line: str, where: str) -> list[dict[str, Any]]:
    """The OpenAI-style messages of one JSONL line (OpenAI ``messages`` or ShareGPT ``conversations``); a line of
    another shape is a ForgeError saying what is expected."""
    rec = parse_json_line(line, where, f"each line must be {_CHAT_SHAPE}")
    if not isinstance(rec, dict):
        raise ForgeError(f"{where}: a JSON {_json_kind(rec)}; each line must be {_CHAT_SHAPE}")
    if "messages" in rec:
        msgs = rec["messages"]
        keys, role_of = ("role", "content"), None
    elif "conversations" in rec:
        msgs = rec["conversations"]
        keys, role_of = ("from", "value"), _SHAREGPT_ROLES
    else:
        raise ForgeError(f"{where}: neither 'messages' nor 'conversations'; each line must be {_CHAT_SHAPE}")
    name = "messages" if role_of is None else "conversations"
    if not isinstance(msgs, list) or not msgs:
        raise ForgeError(f"{where}: '{name}' is a JSON {_json_kind(msgs)}; expected a non-empty list of "
                         f'{{"{keys[0]}", "{keys[1]}"}} objects')
    out = []
    for n, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or not isinstance(m.get(keys[0]), str):
            raise ForgeError(f"{where}: {name} item {n} is not an object with a string '{keys[0]}'")
        content = m.get(keys[1], "")
        if not (isinstance(content, str) or (role_of is None and (content is None or isinstance(content, list)))):
            raise ForgeError(f"{where}: {name} item {n}: '{keys[1]}' is a JSON {_json_kind(content)}; expected text")
        if role_of is None:
            out.append(m)
        else:
            out.append({"role": role_of.get(m[keys[0]], m[keys[0]]), "content": content})
    return out


def _json_kind(value: Any) -> str:
    """``array``, ``string``, ``number``... the JSON name of a parsed value's type."""
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def chunk_tokens(tokens: list[int], ctx: int, bos: int | None, max_chunks: int | None) -> list[list[int]]:
    """llama.cpp's chunking: consecutive ``ctx``-token chunks, the first token of each replaced by BOS."""
    n = len(tokens) // ctx
    if max_chunks:
        n = min(n, max_chunks)
    chunks = []
    for i in range(n):
        c = list(tokens[i * ctx:(i + 1) * ctx])
        if bos is not None:
            c[0] = bos
        chunks.append(c)
    return chunks


def load_model(model_dir: Path, loras: list[LoraSpec], device: str, dtype: Any,
               progress: bool = True, placement: Placement | None = None,
               offload_dir: Path | None = None) -> tuple[Any, Any]:
    """The HF model with its weights (adapters merged on the fly), ready for inference; without ``progress``,
    transformers' own "Loading weights" bar stays hidden too.

    ``placement`` with a ``device_map``: loaded by transformers with accelerate's placement (``offload_dir`` for the
    weights it offloads to the disk and has to re-save); adapters are then merged into the parameters in place,
    which needs every parameter on a device: with a strategy that may offload, :func:`_compute_torch` loads a
    merged checkpoint written beforehand instead (``loras`` empty here)."""
    import torch
    from transformers import AutoModelForCausalLM

    source = Checkpoint(model_dir)
    kw = from_pretrained_kwargs(placement, offload_dir) if placement and placement.device_map else {}
    with _transformers_progress(progress):
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kw)
        except ValueError as e:  # e.g. a model class accelerate cannot split, a map transformers refuses
            if not kw:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ForgeError(f"--device-map {placement.device_map}: transformers could not place {model_dir}: "
                             f"{first}") from None
    if loras:
        source = merged_source(source, loras)
        embed = source.tensors.get("model.embed_tokens.weight")
        rows = embed.shape[0] if embed is not None else None
        if rows and rows != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(rows, mean_resizing=False)
        if not source.config.get("tie_word_embeddings", False) and model.config.tie_word_embeddings:
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        params = dict(model.named_parameters())
        # adapters on modules, replaced tensors, and LoRA on 3-D expert parameters (peft target_parameters)
        with torch.no_grad():
            for name in sorted(source.changed_tensors()):
                target = params.get(name)
                if target is None:
                    target = _fused_expert_slice(params, name)
                if target is None:
                    raise ForgeError(f"{model_dir}: merged tensor {name} has no parameter in {type(model).__name__}")
                target.copy_(torch.from_numpy(source.read_float32(name)).to(dtype=dtype, device=target.device))
    if not kw:
        model = model.to(device)
    return model.eval(), source


def _fused_expert_slice(params: dict, name: str) -> Any:
    """The part of transformers 5's fused expert parameter that a per-expert checkpoint tensor
    (``...experts.{e}.{gate,up,down}_proj.weight``, how Qwen-MoE checkpoints store them) holds: gate rows first in
    ``gate_up_proj`` (n_expert, 2 x ff, hidden), ``down_proj`` (n_expert, hidden, ff); None when there is none."""
    m = re.fullmatch(r"(.+\.experts)\.(\d+)\.(gate|up|down)_proj\.weight", name)
    if m is None:
        return None
    prefix, e, kind = m.group(1), int(m.group(2)), m.group(3)
    fused = params.get(f"{prefix}.{'down_proj' if kind == 'down' else 'gate_up_proj'}")
    if fused is None or fused.dim() != 3 or e >= fused.shape[0]:
        return None
    if kind == "down":
        return fused[e]
    ff = fused.shape[1] // 2
    return fused[e, :ff] if kind == "gate" else fused[e, ff:]


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """transformers' (and huggingface_hub's) progress bars off inside the block unless ``enabled``."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def compute_imatrix(
    model_dir: Path, calibration: str = DEFAULT_CALIBRATION, ctx: int = 512, chunks: int | None = None,
    device: str = "cpu", loras: list[LoraSpec] | None = None, progress: bool = True, threads: int | None = None,
    log: Callable[[str], None] = print, engine: str | None = None, gguf: Path | None = None,
    work_dir: Path | None = None, gguf_type: str = "f16", device_map: str | None = None,
    max_memory: str | dict | None = None, offload_folder: str | Path | None = None,
) -> tuple[IMatrix, dict]:
    """The importance matrix of ``model_dir`` (a Hugging Face folder, or a GGUF file for the llama engine).

    ``engine``: ``llama`` (default on the CPU) or ``torch`` (default with ``device="cuda"``). For the llama engine
    and a folder, ``gguf`` is an already converted (and merged) GGUF of it to use; otherwise a temporary one of
    type ``gguf_type`` is written in ``work_dir`` (default: the cache folder) and removed afterwards.
    For the torch engine, ``device_map`` / ``max_memory`` / ``offload_folder`` are transformers' and accelerate's
    big-model placement (:mod:`.placement`: several GPUs, CPU and disk offload; ``auto`` by default on CUDA); any of
    them selects the torch engine by default.
    Returns the imatrix (keyed by GGUF tensor names) and run statistics (tokens, seconds, tokens/s, engine).
    """
    placing = {"--device-map": device_map, "--max-memory": max_memory, "--offload-folder": offload_folder}
    asked = [k for k, v in placing.items() if v is not None]
    engine = engine or ("torch" if device.startswith("cuda") or asked else "llama")
    if engine not in ENGINES:
        raise ForgeError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if engine == "llama" and asked:
        raise ForgeError(f"{asked[0]}: places the torch engine's model; the llama engine memory-maps a GGUF "
                         "(use --engine torch, or leave the option out)")
    model_dir = Path(model_dir)
    gguf_input = is_gguf(model_dir)
    if engine == "torch":
        if gguf_input:
            raise ForgeError(f"--engine torch: {model_dir} is a GGUF; the torch engine reads a Hugging Face folder "
                             "(use --engine llama for a GGUF)")
        placement = resolve(device, device_map, max_memory, offload_folder)
        return _compute_torch(model_dir, calibration, ctx, chunks, device, loras, progress, threads, placement,
                              work_dir, log)
    if device != "cpu":
        raise ForgeError(f"--engine llama runs on the CPU; for --device {device} use --engine torch")
    if gguf_input:
        if loras:
            raise ForgeError(f"--lora: {model_dir} is a GGUF; adapters merge into a Hugging Face folder "
                             "(give the base model's folder)")
        im, stats = run_llama(model_dir, lambda llm: gguf_calibration_chunks(llm, calibration, ctx, chunks), ctx,
                              threads=threads, progress=progress)
        return im, {**stats, "gguf": str(model_dir)}
    lora_dirs = [resolve_model(spec.path, what="--lora") for spec in loras or []]
    work, dataset = _calibration_chunks(model_dir, lora_dirs, calibration, ctx, chunks)
    if gguf is not None:
        im, stats = run_llama(gguf, lambda llm: (work, dataset), ctx, threads=threads, progress=progress)
        return im, {**stats, "gguf": str(gguf)}
    folder = Path(work_dir) if work_dir is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".imatrix-", dir=folder))
    try:
        t0 = time.perf_counter()
        path, used = _temporary_gguf(model_dir, tmp, loras or [], gguf_type, progress)
        convert_s = time.perf_counter() - t0
        im, stats = run_llama(path, lambda llm: (work, dataset), ctx, threads=threads, progress=progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return im, {**stats, "gguf": None, "gguf_type": used, "convert_seconds": convert_s}


def _temporary_gguf(model_dir: Path, folder: Path, loras: list[LoraSpec], gguf_type: str,
                    progress: bool) -> tuple[Path, str]:
    """``model_dir`` (adapters merged) converted into ``folder``; F16 falls back to BF16 when a weight overflows."""
    out = folder / "model.gguf"
    try:
        convert(model_dir, out, outtype=gguf_type, progress=progress, loras=loras)
        return out, gguf_type
    except NonFiniteError as e:
        if gguf_type != "f16" or "float16" not in str(e):
            raise
    convert(model_dir, out, outtype="bf16", progress=progress, loras=loras)
    return out, "bf16"


def _compute_torch(model_dir: Path, calibration: str, ctx: int, chunks: int | None, device: str,
                   loras: list[LoraSpec] | None, progress: bool, threads: int | None, placement: Placement,
                   work_dir: Path | None, log: Callable[[str], None]) -> tuple[IMatrix, dict]:
    """Run the HF model in torch over the calibration chunks with hooks on every block linear layer (and the MoE
    routers and experts), placed whole on ``device`` or by accelerate (``placement``)."""
    import torch

    on_gpu = check_devices(placement, device)
    if threads:
        torch.set_num_threads(threads)
    lora_dirs = [resolve_model(spec.path, what="--lora") for spec in loras or []]
    work, dataset = _calibration_chunks(model_dir, lora_dirs, calibration, ctx, chunks)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    folder = Path(work_dir) if work_dir is not None else cache_dir()
    temps: list[Path] = []
    try:
        offload_dir = None
        if placement.strategy:
            base = placement.offload_folder or folder
            base.mkdir(parents=True, exist_ok=True)
            offload_dir = Path(tempfile.mkdtemp(prefix=".offload-", dir=base))
            temps.append(offload_dir)
        load_dir, load_loras = model_dir, list(loras or [])
        if loras and placement.strategy:
            # offloaded parameters are not in memory to merge into: merge into a checkpoint first (streaming, as
            # `quantize merge` writes it), which accelerate then places and reads its offloaded weights from
            folder.mkdir(parents=True, exist_ok=True)
            merged = Path(tempfile.mkdtemp(prefix=".merged-", dir=folder))
            temps.append(merged)
            log(f"imatrix: merging the adapters into a temporary checkpoint in {folder} for accelerate's placement")
            # float32 when torch computes in float32 (the merge exactly as the in-place one), else the base's type
            write_hf_checkpoint(merged_source(Checkpoint(model_dir), loras), merged / "model",
                                dtype="f32" if dtype == torch.float32 else "auto")
            load_dir, load_loras = merged / "model", []
        model, source = load_model(load_dir, load_loras, device, dtype, progress=progress, placement=placement,
                                   offload_dir=offload_dir)
        where = summary(model) if placement.device_map else {}
        if where.get("modules_per_device"):
            log("imatrix: placement " + ", ".join(f"{d}: {n} module{'s' if n > 1 else ''}"
                                                   for d, n in where["modules_per_device"].items()))
        run_on = str(execution_device(model, device))
        t0 = time.perf_counter()
        im = collect_torch(model, arch_for_config(source.config), work, dataset, run_on, progress)
        seconds = time.perf_counter() - t0
        offload_files = sorted(p.name for p in offload_dir.rglob("*") if p.is_file()) if offload_dir else []
        del model
    finally:
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)
    n_tok = len(work) * ctx
    stats = {"tokens": n_tok, "chunks": len(work), "seconds": seconds, "tokens_per_s": n_tok / seconds,
             "entries": len(im.sums), "device": run_on, "engine": "torch", "dtype": str(dtype).removeprefix("torch.")}
    if placement.device_map:
        stats.update(placement=placement.device_map, **where, offload_files=offload_files)
        if placement.max_memory:
            stats["max_memory"] = {str(k): v for k, v in placement.max_memory.items()}
    return im, stats


def _chat_template(model_dir: Path, lora_dirs: list[Path]) -> str | None:
    """The chat template chats are rendered with: the last adapter's that has one, else the model's."""
    for folder in reversed(lora_dirs):
        template = chat_template.from_hf_dir(folder)
        if template is not None:
            return template
    return chat_template.from_hf_dir(model_dir)


def _calibration_chunks(model_dir: Path, lora_dirs: list[Path], calibration: str, ctx: int,
                        chunks: int | None) -> tuple[list[list[int]], str]:
    """The calibration text tokenized (by the last adapter's tokenizer, if one ships its own) and chunked."""
    from transformers import AutoTokenizer

    tok_dir = model_dir
    for p in lora_dirs:
        if (p / "tokenizer.json").is_file() or (p / "tokenizer.model").is_file():
            tok_dir = p
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    text, dataset = load_calibration(calibration, _chat_template(model_dir, lora_dirs),
                                     bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    bos_added = tokenizer("a", add_special_tokens=True).input_ids[:1] == [tokenizer.bos_token_id]
    bos = tokenizer.bos_token_id if bos_added and tokenizer.bos_token_id is not None else None
    if len(ids) < 2 * ctx:
        raise ForgeError(
            f"--calibration: the text has {len(ids)} tokens, fewer than two chunks of --ctx {ctx}; "
            "give more text or a smaller --ctx"
        )
    return chunk_tokens(ids, ctx, bos, chunks), dataset


def collect_torch(model: Any, arch: Any, work: list[list[int]], dataset: str, device: Any = "cpu",
                  progress: bool = False) -> IMatrix:
    """The torch engine's statistic of a loaded transformers ``model`` over the token chunks ``work`` (inputs on
    ``device``, the first device of an accelerate placement); GGUF names and column order from ``arch``
    (:meth:`~..convert.arch.Architecture.imatrix_columns`); MoE experts per expert."""
    sums, counts = _collect(model, arch, work, device, progress)
    im = IMatrix(datasets=[dataset], chunk_count=len(work), chunk_size=len(work[0]) if work else 0)
    for name, s in sums.items():
        values = s.double().cpu().numpy().reshape(-1, s.shape[-1])  # (n_expert, cols) for MoE experts
        # the GGUF's column order (Qwen3.5's V heads)
        im.sums[name] = np.ascontiguousarray(arch.imatrix_columns(name, values), dtype=np.float64)
        im.counts[name] = np.asarray(counts[name], dtype=np.float64).reshape(-1)
    return im


def _collect(model: Any, arch: Any, work: list[list[int]], device: Any, progress: bool) -> tuple[dict, dict]:
    """Run ``model`` over the chunks; per GGUF weight name, the sum of x_j^2 over tokens (float64, on the CPU) and
    the token count. Each hook squares and sums its input where its module runs (GPU, CPU, or the execution device
    of a module accelerate brought in from the CPU or the disk), in float32, into a per-chunk partial sum on that
    device; the partial sums are added to the float64 totals on the CPU after every chunk."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    part: dict[str, torch.Tensor] = {}
    counts: dict[str, Any] = {}
    hooks = []
    for mname, module in model.named_modules():
        if ".layers." not in f".{mname}.":
            continue
        if _is_experts(module):
            hooks.append(module.register_forward_pre_hook(partial(_experts_hook, _block(mname), part, counts),
                                                          with_kwargs=True))
            continue
        if isinstance(module, torch.nn.Linear):
            gname = arch.gguf_name(mname + ".weight")
        elif type(module).__name__.endswith("Router") and getattr(module, "weight", None) is not None \
                and module.weight.dim() == 2:
            gname = f"{_block(mname)}.ffn_gate_inp.weight"  # a MoE router (llama.cpp's name in every MoE family)
        else:
            continue
        if gname is None:
            continue

        def hook(mod, args, gname=gname):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            s = (x * x).sum(0)
            if gname in part:
                part[gname] += s
            else:
                part[gname] = s
            counts[gname] = counts.get(gname, 0) + x.shape[0]

        hooks.append(module.register_forward_pre_hook(hook))
    try:
        with (progress_bar(sum(len(c) for c in work), "imatrix", enabled=progress, unit="tok") as bar,
              torch.inference_mode()):
            for c in work:
                model(torch.tensor([c], device=device), use_cache=False)
                for name, s in part.items():
                    total = s.to(device="cpu", dtype=torch.float64)
                    sums[name] = sums[name] + total if name in sums else total
                part.clear()
                bar.update(len(c))
    finally:
        for h in hooks:
            h.remove()
    return sums, counts


def _block(module_name: str) -> str:
    """``model.layers.3.mlp.experts`` -> ``blk.3``."""
    m = re.search(r"\.layers\.(\d+)\.", f".{module_name}.")
    if m is None:
        raise ForgeError(f"imatrix: cannot tell the layer of {module_name}")
    return f"blk.{m.group(1)}"


def _is_experts(module: Any) -> bool:
    """transformers' fused MoE experts: ``gate_up_proj`` (n_expert, 2 x ff, hidden) and ``down_proj``
    (n_expert, hidden, ff), called with the hidden states and the selected experts (Mixtral, Qwen2/3-MoE, OLMoE...)."""
    import torch

    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, torch.nn.Parameter) and isinstance(down, torch.nn.Parameter) and gu.dim() == 3


def _experts_hook(blk: str, sums: dict, counts: dict, mod: Any, args: tuple, kwargs: dict) -> None:
    """llama-imatrix's MUL_MAT_ID bookkeeping in torch: per expert, the squared inputs of the (token, expert) pairs
    the router selected and their number, for the gate/up experts (the hidden states) and the down experts
    (act(gate) * up, recomputed here from the expert's weights)."""
    import torch

    hidden = args[0] if args else kwargs["hidden_states"]
    top_k = args[1] if len(args) > 1 else kwargs["top_k_index"]
    gu, down = _weight(mod, "gate_up_proj", blk), _weight(mod, "down_proj", blk)
    n_expert, two_ff, n_embd = gu.shape
    ff = two_ff // 2
    if two_ff % 2 or down.shape != (n_expert, n_embd, ff) or getattr(mod, "has_bias", False):
        raise ForgeError(f"--engine torch: the experts of {blk} ({type(mod).__name__}, gate_up_proj "
                         f"{list(gu.shape)}, down_proj {list(down.shape)}) have a layout this engine does not read; "
                         "use --engine llama")
    x = hidden.detach().reshape(-1, n_embd).float()
    top_k = top_k.reshape(x.shape[0], -1)
    names = [f"{blk}.ffn_{k}_exps.weight" for k in ("gate", "up", "down")]
    for name, cols in zip(names, (n_embd, n_embd, ff)):
        if name not in sums:
            sums[name] = torch.zeros(n_expert, cols, dtype=torch.float32, device=x.device)
        if name not in counts:
            counts[name] = np.zeros(n_expert)
    for e in range(n_expert):
        rows = (top_k == e).any(dim=1).nonzero().reshape(-1)
        if rows.numel() == 0:
            continue
        xe = x[rows]
        sq = (xe * xe).sum(0)
        gate, up = torch.nn.functional.linear(xe, gu[e].to(device=x.device, dtype=torch.float32)).chunk(2, dim=-1)
        h = mod.act_fn(gate) * up
        for name, s in zip(names, (sq, sq, (h * h).sum(0))):
            sums[name][e] += s
            counts[name][e] += rows.numel()


def _weight(mod: Any, name: str, blk: str) -> Any:
    """A parameter of ``mod`` as its forward will see it: when accelerate offloaded the module (to the CPU or the
    disk), the parameter is on the meta device until the module's own hook brings it in, which happens after the
    forward pre-hooks: read it from the hook's offloaded weights instead."""
    p = getattr(mod, name)
    if p.device.type != "meta":
        return p
    weights = getattr(getattr(mod, "_hf_hook", None), "weights_map", None)
    if weights is None:
        raise ForgeError(f"--engine torch: the experts of {blk} ({type(mod).__name__}.{name}) are on the meta device "
                         "with no offloaded copy to read")
    return weights[name]


def gguf_calibration_chunks(llm: Any, calibration: str, ctx: int,
                            chunks: int | None) -> tuple[list[list[int]], str]:
    """The calibration text rendered with the GGUF's chat template, tokenized by llama.cpp and chunked (BOS first
    when the vocabulary adds it)."""
    from llama_cpp import llama_cpp as C

    vocab = C.llama_model_get_vocab(llm.model)
    template = llm.metadata.get("tokenizer.chat_template")

    def text_of(tok: int) -> str:
        return C.llama_vocab_get_text(vocab, tok).decode("utf-8", errors="replace") if tok >= 0 else ""

    text, dataset = load_calibration(calibration, template, bos_token=text_of(C.llama_vocab_bos(vocab)),
                                     eos_token=text_of(C.llama_vocab_eos(vocab)))
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    if len(ids) < 2 * ctx:
        raise ForgeError(f"--calibration: the text has {len(ids)} tokens, fewer than two chunks of --ctx {ctx}; "
                         "give more text or a smaller --ctx")
    bos = C.llama_vocab_bos(vocab) if C.llama_vocab_get_add_bos(vocab) else None
    return chunk_tokens(ids, ctx, bos if bos is not None and bos >= 0 else None, chunks), dataset
