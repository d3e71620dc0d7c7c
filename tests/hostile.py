"""What the hostile-input tests share: a tiny model to break, the CLI run in this process, safetensors editing."""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from click.testing import CliRunner

from gguf_forge.convert.checkpoint import read_safetensors_header
from gguf_forge.tools.cli.main import main

from fixtures import fixture_dir

BASE = "qwen2"  # tiny f32 Qwen2 with a real tokenizer (~2 MB)


# -- helpers --------------------------------------------------------------------
@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: object) -> Ran:
    """``quantize ARGS...`` in this process; an exception that escapes the CLI's error boundary fails the test."""
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"traceback from quantize {' '.join(map(str, args))}") from r.exception
    return Ran(r.exit_code, r.stdout, r.stderr)


def copy_model(dest: Path, name: str = BASE, llama: bool = False) -> Path:
    """A private copy of a fixture (JSON files copied, weights copied too: the tests rewrite them in place)."""
    shutil.copytree(fixture_dir(name), dest, ignore=shutil.ignore_patterns(".complete"))
    for f in dest.iterdir():
        f.chmod(0o644)
    if llama:  # the same weights as a Llama: Q/K rows are permuted for llama.cpp's rope
        edit_json(dest / "config.json", lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama"))
    return dest


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    """Change the JSON object in ``path`` in place (``change``'s return value is ignored)."""
    data = json.loads(path.read_text())
    change(data)
    write_json(path, data)


def write_json(path: Path, data: object) -> None:
    path.unlink(missing_ok=True)
    path.write_text(json.dumps(data))


def st_read(path: Path) -> tuple[dict, bytes]:
    """(header, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(path: Path, header: object, data: bytes, length: int | None = None) -> None:
    """Write a safetensors file with ``header`` (any JSON, or raw bytes) in front of ``data``."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.unlink(missing_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def st_edit(path: Path, change: Callable[[dict], object]) -> None:
    """Change a safetensors header in place (``change``'s return value is ignored); the data stays."""
    header, data = st_read(path)
    change(header)
    st_write(path, header, data)


def make_adapter(dest: Path, base: Path, r: int = 4, alpha: float = 8, modules: tuple[str, ...] = ("q_proj", "v_proj"),
                 seed: int = 0, std: float = 0.05) -> Path:
    """A PEFT LoRA adapter for ``base`` written directly (random factors), as peft saves one."""
    from safetensors.numpy import save_file

    refs = read_safetensors_header(base / "model.safetensors")
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, ref in refs.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in modules:
            rows, cols = ref.shape
            tensors[f"base_model.model.{module}.lora_A.weight"] = (std * rng.standard_normal((r, cols))).astype("f4")
            tensors[f"base_model.model.{module}.lora_B.weight"] = (std * rng.standard_normal((rows, r))).astype("f4")
    dest.mkdir(parents=True)
    save_file(tensors, dest / "adapter_model.safetensors")
    write_json(dest / "adapter_config.json", {
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(modules), "bias": "none",
        "base_model_name_or_path": base.name, "use_rslora": False, "use_dora": False, "rank_pattern": {},
        "alpha_pattern": {}, "fan_in_fan_out": False, "modules_to_save": None, "task_type": "CAUSAL_LM",
    })
    return dest


def assert_nothing_written(folder: Path) -> None:
    assert list(folder.iterdir()) == [], list(folder.iterdir())
