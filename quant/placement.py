"""Where the torch imatrix engine puts the model: accelerate's big-model placement through transformers.

The options are spelled as transformers' ``from_pretrained`` and accelerate spell them, so a user who knows
``device_map="auto", max_memory={0: "20GiB", "cpu": "30GiB"}, offload_folder="offload"`` knows ours:

- ``--device-map auto|balanced|balanced_low_0|sequential|cpu|cuda|cuda:N``: a strategy (accelerate fills the GPUs
  in order, then the CPU, then the disk) or one device for the whole model;
- ``--max-memory 0=20GiB,1=20GiB,cpu=30GiB``: the budget per device (GPU index or ``cuda:N``, and ``cpu``), sizes
  with accelerate's units (``GiB``/``MiB``/``KiB`` powers of two, ``GB``/``MB``/``KB`` powers of ten, or bytes);
- ``--offload-folder DIR``: where weights offloaded to the disk go when transformers has to re-save them (weights
  read as they are stay in the checkpoint's own safetensors files and are read from there).

Modules placed on ``cpu`` next to a GPU, or on ``disk``, keep their weights off the execution device between uses;
accelerate's hooks bring each one's weights in for its forward and drop them after (one module at a time), so a
model larger than memory runs, streamed from the disk. Everything here raises a one-line :class:`ForgeError` naming
the option for bad values or a device torch does not have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ForgeError

#: accelerate's strategies (the string values of ``device_map`` it computes a map for)
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
_EXAMPLE = "e.g. 0=20GiB,1=20GiB,cpu=30GiB"


@dataclass
class Placement:
    """The torch engine's placement: ``device_map`` None means the whole model ``.to(device)`` (no accelerate)."""

    device_map: str | None = None
    max_memory: dict[int | str, int] = field(default_factory=dict)
    offload_folder: Path | None = None

    @property
    def strategy(self) -> bool:
        """accelerate computes the map (and may offload to the CPU and the disk)."""
        return self.device_map in STRATEGIES


def parse_size(text: str, option: str = "--max-memory") -> int:
    """``20GiB`` -> bytes (accelerate's units; a bare number is bytes)."""
    m = _SIZE.match(text)
    if m is None:
        raise ForgeError(f"{option}: size {text!r} is not a number with a unit such as GiB, MiB, GB, MB ({_EXAMPLE})")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def parse_max_memory(text: str) -> dict[int | str, int]:
    """``0=20GiB,cuda:1=20GiB,cpu=30GiB`` -> ``{0: bytes, 1: bytes, "cpu": bytes}`` (accelerate's ``max_memory``)."""
    out: dict[int | str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ForgeError(f"--max-memory {text}: {part.strip()!r} is not DEVICE=SIZE ({_EXAMPLE})")
        key, size = (s.strip() for s in part.split("=", 1))
        k = key.lower()
        cuda = _CUDA.match(k)
        if k.isdigit():
            dev: int | str = int(k)
        elif cuda and cuda.group(1) is not None:
            dev = int(cuda.group(1))
        elif k == "cpu":
            dev = "cpu"
        else:
            raise ForgeError(f"--max-memory {text}: device {key!r} is not a GPU index (0, cuda:0...) or cpu "
                             f"({_EXAMPLE})")
        if dev in out:
            raise ForgeError(f"--max-memory {text}: device {key!r} is given twice")
        out[dev] = parse_size(size)
    if not out:
        raise ForgeError(f"--max-memory {text!r}: no DEVICE=SIZE pair ({_EXAMPLE})")
    return out


def check_device_map(value: str) -> str:
    """A valid ``--device-map`` value (normalized), or a ForgeError listing the choices."""
    v = value.strip().lower()
    if v in STRATEGIES or v == "cpu" or _CUDA.match(v):
        return v
    raise ForgeError(f"--device-map {value}: choose {', '.join(STRATEGIES)}, cpu, cuda or cuda:N")


def resolve(device: str, device_map: str | None, max_memory: str | dict | None,
            offload_folder: str | Path | None) -> Placement:
    """The placement asked for: ``--max-memory`` / ``--offload-folder`` without ``--device-map`` mean ``auto``, and
    so does ``--device cuda`` alone; ``--device cpu`` alone keeps the whole model in memory (no accelerate)."""
    budget = parse_max_memory(max_memory) if isinstance(max_memory, str) else dict(max_memory or {})
    if device_map is not None:
        dm: str | None = check_device_map(device_map)
    elif budget or offload_folder is not None or device.startswith("cuda"):
        dm = "auto"
    else:
        dm = None
    if budget and dm not in STRATEGIES:
        raise ForgeError(f"--max-memory: the budget is for accelerate's placement; it needs --device-map "
                         f"{' or '.join(STRATEGIES[:2])} (not {dm})")
    folder = Path(offload_folder).expanduser() if offload_folder is not None else None
    if folder is not None and dm not in STRATEGIES:
        raise ForgeError(f"--offload-folder: only accelerate's placement offloads to the disk; it needs --device-map "
                         f"{' or '.join(STRATEGIES[:2])} (not {dm})")
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ForgeError(f"--offload-folder {folder}: exists and is not a folder")
    return Placement(dm, budget, folder)


def check_devices(placement: Placement, device: str) -> bool:
    """Refuse CUDA devices torch does not have (naming the option that asked for them); True when the placement
    runs on a GPU (so the model is loaded in bfloat16, as with ``--device cuda``)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = "no CUDA device is available to torch here" if n == 0 else \
        f"torch sees {n} CUDA device{'s' if n > 1 else ''} (cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})"
    if device.startswith("cuda") and n == 0:
        raise ForgeError(f"--device {device}: {have}; use --device cpu")
    dm = placement.device_map or ""
    cuda = _CUDA.match(dm)
    if cuda:
        index = int(cuda.group(1) or 0)
        if index >= n:
            raise ForgeError(f"--device-map {dm}: {have}; use --device-map cpu or auto")
    for key in placement.max_memory:
        if isinstance(key, int) and key >= n:
            raise ForgeError(f"--max-memory: GPU {key}: {have}; give cpu=SIZE only")
    if cuda:
        return True
    if placement.strategy and n:
        return not placement.max_memory or any(isinstance(k, int) for k in placement.max_memory)
    return False


def from_pretrained_kwargs(placement: Placement, offload_dir: Path | None) -> dict[str, Any]:
    """The ``device_map`` / ``max_memory`` / ``offload_folder`` arguments of transformers' ``from_pretrained``."""
    kw: dict[str, Any] = {"device_map": placement.device_map}
    if placement.strategy:
        if placement.max_memory:
            kw["max_memory"] = dict(placement.max_memory)
        if offload_dir is not None:
            kw["offload_folder"] = str(offload_dir)
    return kw


def execution_device(model: Any, fallback: str) -> Any:
    """Where the inputs go: accelerate's main device (the first GPU in the map; the CPU when the map holds only
    the CPU and the disk)."""
    dm = getattr(model, "hf_device_map", None)
    if not dm:  # one device (transformers keeps no map then): where the parameters are
        return next((str(p.device) for p in model.parameters()), fallback)
    for dev in map(str, dm.values()):  # ints (GPU indices), strings or torch.device objects
        if dev not in ("cpu", "disk"):
            return f"cuda:{dev}" if dev.isdigit() else dev
    return "cpu"


def summary(model: Any) -> dict[str, Any]:
    """The map transformers/accelerate made (module -> device, as strings) and the number of modules per device."""
    dm = {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}
    if not dm:  # one device: transformers keeps no map
        dm = {"": next((str(p.device) for p in model.parameters()), "cpu")}
    per: dict[str, int] = {}
    for v in dm.values():
        per[v] = per.get(v, 0) + 1
    offloaded = "disk" in per or ("cpu" in per and len(per) > 1)  # modules kept off their execution device
    return {"device_map": dm, "modules_per_device": per, "offloaded": offloaded}
