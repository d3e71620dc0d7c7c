"""Property test (issue 14): 200 seeded random mutations of a valid tiny checkpoint and adapter.

Each case mutates one of config.json, the safetensors header or adapter_config.json of a working model (random type
changes, removals, additions, out-of-range and non-finite numbers, offsets and shapes moved), then converts it in
this process through click's runner. Whatever the mutation:

- no exception escapes the CLI (never a traceback), the exit code is 0 or 2;
- exit 2: exactly one ``error:`` line on stderr, and nothing in the output folder;
- exit 0: the GGUF loads in llama.cpp (checked at the end, in one child process, so an abort in llama.cpp names the
  file instead of killing the test run). A mutation that leaves the input valid may convert; an invalid one that
  converts is caught here, because llama.cpp refuses what the converter should have refused.

Case ``i`` uses ``random.Random(SEED * 1000 + i)``: a failure names its case and mutation, and reruns alone with
``-k`` on nothing more than the seed list.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from hostile import cli, copy_model, make_adapter, st_read

SEED = 14
KINDS = ["config"] * 80 + ["header"] * 70 + ["adapter"] * 50  # 200 cases

ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2, 3, 7, 16, 2**31, 2**32, 2**40, -(2**63), 2**64, 0.5, -0.0, 1.5, 1e39, 1e-45,
    1e300, math.nan, math.inf, -math.inf, "", "x", "64", [], [1, 2], {}, {"a": 1},
]
CONFIG_KEYS = [
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "vocab_size", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "tie_word_embeddings", "architectures", "model_type", "eos_token_id", "bos_token_id",
    "sliding_window", "layer_types", "_name_or_path", "text_config",
]
ADAPTER_KEYS = [
    "r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "peft_type", "target_modules",
    "base_model_name_or_path", "modules_to_save", "layer_replication", "use_qalora", "fan_in_fan_out", "bias",
]
ROPE_VALUES: list[Any] = [
    {"rope_type": "yarn"}, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    {"rope_type": "linear", "factor": 2.0}, {"type": "linear"}, {"rope_type": "llama3", "factor": 8.0},
    {"rope_type": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 1.0}, {"rope_type": "dynamic", "factor": 2},
    {"rope_theta": -1.0}, {"rope_theta": 1e6, "rope_type": "default"},
    {"full_attention": {"rope_theta": 1e6, "rope_type": "default"}, "sliding_attention": 5},
]


# -- mutations -------------------------------------------------------------------------------------------------------
def odd_value(rng: random.Random, current: Any = None) -> Any:
    """A value of a random type, or (for numbers) a nearby, scaled, negated or extreme one."""
    if isinstance(current, (int, float)) and not isinstance(current, bool) and rng.random() < 0.5:
        return rng.choice([current + 1, current - 1, -current, current * 2, current * 1000, current / 2, 0,
                           current * 10**12, float(current)])
    return rng.choice(ODD_VALUES + ROPE_VALUES[:3])


def mutate_object(rng: random.Random, obj: dict, keys: list[str], path: str = "") -> str:
    """Mutate ``obj`` in place at a random key (recursing into objects); a description of the change."""
    op = rng.choice(["delete", "replace", "replace", "add", "recurse"])
    if op == "recurse":
        nested = [k for k, v in obj.items() if isinstance(v, dict) and v]
        if nested:
            k = rng.choice(sorted(nested))
            return mutate_object(rng, obj[k], list(obj[k]), f"{path}{k}.")
        op = "replace"
    if op == "add" or not obj:
        k = rng.choice(keys)
        obj[k] = rng.choice(ROPE_VALUES) if "rope" in k and rng.random() < 0.6 else odd_value(rng, obj.get(k))
        return f"set {path}{k}={short(obj[k])}"
    k = rng.choice(sorted(obj))
    if op == "delete":
        del obj[k]
        return f"delete {path}{k}"
    obj[k] = odd_value(rng, obj[k])
    return f"set {path}{k}={short(obj[k])}"


def short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) < 60 else text[:57] + "..."


def mutate_json_file(rng: random.Random, path: Path, keys: list[str]) -> str:
    data = json.loads(path.read_text())
    if rng.random() < 0.03:
        data = rng.choice([[], [1], "x", 5, None])
        what = f"whole file -> {short(data)}"
    else:
        what = "; ".join(mutate_object(rng, data, keys) for _ in range(rng.choice([1, 1, 1, 2, 3])))
    path.unlink()
    path.write_text(json.dumps(data))
    return f"{path.name}: {what}"


def mutate_entry(rng: random.Random, header: dict, name: str) -> str:
    """One change to one tensor's header entry."""
    entry = header[name]
    names = [k for k in header if k != "__metadata__"]
    field = rng.choice(["dtype", "shape", "shape", "data_offsets", "data_offsets", "entry"])
    if not isinstance(entry, dict) or (field != "entry" and not _well_formed(entry)):
        header[name] = odd_value(rng)  # an entry an earlier change already broke
        return f"{name}: -> {short(header[name])}"
    if field == "entry":
        op = rng.choice(["delete", "rename", "replace", "swap-offsets"])
        if op == "delete":
            del header[name]
        elif op == "rename":
            header[rng.choice(["model.extra.weight", rng.choice(names) + ".x", "lm_head.bias"])] = header.pop(name)
        elif op == "replace":
            header[name] = odd_value(rng)
        else:
            other = header[rng.choice(names)]
            if isinstance(other, dict) and "data_offsets" in other and "data_offsets" in entry:
                entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
        return f"{name}: {op}"
    if rng.random() < 0.15:
        del entry[field]
        return f"{name}: delete {field}"
    if field == "dtype":
        entry["dtype"] = rng.choice(["F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "f32", 5, None])
    elif field == "shape":
        shape = list(entry["shape"])
        op = rng.choice(["dim", "dim", "drop", "add", "swap", "odd"])
        if op == "dim" and shape:
            i = rng.randrange(len(shape))
            shape[i] = rng.choice([shape[i] + 1, shape[i] - 1, shape[i] * 2, 0, -shape[i], 2**40, "64", 1.5, None])
        elif op == "drop" and shape:
            shape.pop()
        elif op == "add":
            shape.insert(rng.randrange(len(shape) + 1), rng.choice([1, 2]))
        elif op == "swap":
            shape.reverse()
        else:
            shape = odd_value(rng)
        entry["shape"] = shape
    else:
        begin, end = entry["data_offsets"]
        delta = rng.choice([1, 2, 4, 256, 10**9])
        entry["data_offsets"] = rng.choice([
            [begin + delta, end + delta], [begin - delta, end - delta], [begin, end + delta], [begin + delta, end],
            [end, begin], [begin], [begin, end, end], [str(begin), end], [begin, float(end)], odd_value(rng),
        ])
    return f"{name}: {field} -> {short(entry.get(field))}"


def _well_formed(entry: dict) -> bool:
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    return isinstance(shape, list) and all(isinstance(d, int) for d in shape) and isinstance(offsets, list) \
        and len(offsets) == 2 and all(isinstance(o, int) for o in offsets) and "dtype" in entry


def mutate_header(rng: random.Random, path: Path) -> str:
    header, data = st_read(path)
    raw_length = None
    roll = rng.random()
    if roll < 0.04:
        header, what = rng.choice([[], [1, 2], "x", None]), "whole header replaced"
    elif roll < 0.08:
        raw_length = rng.choice([1, 7, 2**40, 2**63])
        what = f"header length -> {raw_length}"
    elif roll < 0.16:
        header["__metadata__"] = rng.choice([{"format": 1}, [], "pt", None, {"format": "pt", "x": "y"}])
        what = f"__metadata__ -> {short(header['__metadata__'])}"
    else:
        changes = []
        for _ in range(rng.choice([1, 1, 2])):
            changes.append(mutate_entry(rng, header, rng.choice(sorted(k for k in header if k != "__metadata__"))))
        what = "; ".join(changes)
    raw = json.dumps(header).encode()
    path.unlink()
    path.write_bytes(struct.pack("<Q", len(raw) if raw_length is None else raw_length) + raw + data)
    return f"{path.name}: {what}"


# -- the property ----------------------------------------------------------------------------------------------------
def linked_model(src: Path, dest: Path) -> Path:
    """``dest`` with a link to each file of ``src`` (a mutation replaces a link by a file, never writes through it)."""
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).symlink_to(f)
    return dest


def run_case(i: int, kind: str, base: Path, adapter: Path, work: Path, results: Path) -> tuple[str, str | None]:
    """Mutate and convert once; (description, a problem or None). A converted file is kept in ``results``."""
    rng = random.Random(SEED * 1000 + i)
    case = work / f"case-{i}"
    case.mkdir()
    model, lora = base, None
    if kind == "adapter":
        lora = linked_model(adapter, case / "adapter")
        what = mutate_json_file(rng, lora / "adapter_config.json", ADAPTER_KEYS)
    else:
        model = linked_model(base, case / "model")
        if kind == "config":
            what = mutate_json_file(rng, model / "config.json", CONFIG_KEYS)
        else:
            what = mutate_header(rng, model / "model.safetensors")
    out = case / "out"
    out.mkdir()
    args = ["convert", model, "-o", out / "m.gguf", "--no-progress"] + (["--lora", lora] if lora else [])
    try:
        r = cli(*args)
    except AssertionError as e:  # an exception escaped the CLI
        return what, f"traceback: {e.__cause__!r}"
    problem = None
    if r.returncode == 2:
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problem = f"exit 2 without exactly one error line: {r.stderr!r}"
        elif list(out.iterdir()):
            problem = f"refused but left {[f.name for f in out.iterdir()]}"
    elif r.returncode == 0:
        (out / "m.gguf").rename(results / f"case-{i}.gguf")
    else:
        problem = f"exit {r.returncode}: {r.stderr!r}"
    shutil.rmtree(case)
    return what, problem


LOADER = r"""
import sys
from gguf_forge.errors import ForgeError
from gguf_forge.runtime import load_model
for path in sys.argv[1:]:
    print("loading", path, flush=True)
    try:
        load_model(path, n_ctx=64, threads=1)
        print("ok", path, flush=True)
    except ForgeError as e:
        print("refused", path, str(e).replace("\n", " "), flush=True)
"""


def load_all(files: list[Path]) -> dict[str, str]:
    """path -> "ok" or llama.cpp's complaint, for every converted file (one child process)."""
    if not files:
        return {}
    p = subprocess.run([sys.executable, "-c", LOADER, *map(str, files)], capture_output=True, text=True, timeout=300)
    verdict: dict[str, str] = {}
    current = None
    for line in p.stdout.splitlines():
        word, _, rest = line.partition(" ")
        path, _, why = rest.partition(" ")
        if word == "loading":
            current = path
        elif word in ("ok", "refused"):
            verdict[path] = "ok" if word == "ok" else why
            current = None
    if current is not None:
        verdict[current] = f"llama.cpp died loading it (exit {p.returncode}): {p.stderr[-300:]!r}"
    return verdict


def test_random_mutations_never_traceback_and_never_write_an_invalid_gguf(tmp_path):
    base = copy_model(tmp_path / "Tiny-Llama", llama=True)  # Q/K rows permuted: the more fragile path
    adapter = make_adapter(tmp_path / "adapter", base)
    results = tmp_path / "converted"
    results.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    r = cli("convert", base, "--lora", adapter, "-o", results / "baseline.gguf", "--no-progress")
    assert r.returncode == 0, r.stderr  # the unmutated input converts

    problems, descriptions = [], {}
    for i, kind in enumerate(KINDS):
        what, problem = run_case(i, kind, base, adapter, work, results)
        descriptions[i] = what
        if problem:
            problems.append(f"case {i} ({what}): {problem}")
    converted = sorted(results.glob("case-*.gguf"), key=lambda f: int(f.stem.split("-")[1]))
    verdict = load_all([results / "baseline.gguf", *converted])
    assert verdict.get(str(results / "baseline.gguf")) == "ok", verdict
    for f in converted:
        if verdict.get(str(f)) != "ok":
            i = int(f.stem.split("-")[1])
            problems.append(f"case {i} ({descriptions[i]}): converted (exit 0) but llama.cpp: {verdict.get(str(f))}")
    print(f"{len(KINDS)} mutations: {len(converted)} converted and loaded, {len(KINDS) - len(converted)} refused")
    assert not problems, "\n".join(problems)
    # both outcomes happen: the mutations are neither all harmless nor all rejected
    assert 10 <= len(converted) <= len(KINDS) - 50
