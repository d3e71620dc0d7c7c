"""Hugging Face checkpoints -> GGUF.

Public surface:

- :func:`convert` (``quantize convert``): stream a Hugging Face model directory into a GGUF file.
- :func:`resolve_model`: a local path or a hub id (from the local huggingface_hub cache) -> directory.
- :func:`parse_override` / :class:`KVOverride`: ``KEY=TYPE:VALUE`` metadata overrides (``--override-kv``).
- :func:`arch_for_config`: the :class:`~.arch.Architecture` handling a ``config.json`` (a ForgeError listing the
  supported ones otherwise); :func:`supported_architectures`: the Hugging Face architecture names handled.
- :class:`Checkpoint`: streaming, tensor-by-tensor access to a checkpoint's weights, its ``config.json`` and
  safetensors headers validated up front (:func:`check_config`); :class:`NonFiniteError`: a tensor holding NaN or
  infinity, found while streaming (``allow_nonfinite=True`` keeps them).
- :func:`parse_lora_spec` / :class:`LoraSpec` / :func:`merged_source`: PEFT LoRA adapters merged while
  streaming (``convert --lora``); :func:`write_hf_checkpoint` writes a merged checkpoint (``quantize merge``).
- :func:`inspect_gguf` / :func:`format_inspection` (``quantize inspect``): what a GGUF file holds.
- :func:`default_model_dir` / :func:`smollm2_gguf`: the embedded default model (SmolLM2-135M-Instruct).

Architectures live one per module in :mod:`gguf_forge.convert.arch` (a new module registers itself; nothing else
is edited); tokenizers in :mod:`.tokenizer` with pre-tokenizer detection in :mod:`.pretokenizer`.
"""

from .arch import for_config as arch_for_config
from .arch import supported as supported_architectures
from .checkpoint import Checkpoint, NonFiniteError
from .config import check_config
from .converter import OUTTYPES, ConvertResult, convert
from .default_model import default_model_dir, smollm2_gguf
from .hf_writer import write_hf_checkpoint
from .inspect import format_inspection, inspect_gguf
from .lora import Adapter, LoraSpec, MergedCheckpoint, merged_source, parse_lora_spec
from .overrides import KVOverride, parse_override
from .resolve import resolve_model

__all__ = [
    "Adapter", "LoraSpec", "MergedCheckpoint", "merged_source", "parse_lora_spec", "write_hf_checkpoint",
    "Checkpoint", "NonFiniteError", "check_config",
    "ConvertResult", "KVOverride", "OUTTYPES", "convert", "parse_override", "resolve_model",
    "arch_for_config", "supported_architectures", "format_inspection", "inspect_gguf", "default_model_dir",
    "smollm2_gguf",
]
