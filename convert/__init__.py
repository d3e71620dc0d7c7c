"""Hugging Face checkpoints -> GGUF.

Public surface:

- :func:`convert` (``quantize convert``): stream a Hugging Face model directory into a GGUF file.
- :func:`resolve_model`: a local path or a hub id (from the local huggingface_hub cache) -> directory.
- :func:`parse_override` / :class:`KVOverride`: ``--override-kv KEY=TYPE:VALUE``.
- :func:`supported_architectures`: the Hugging Face architecture names handled.
- :class:`Checkpoint`: streaming, tensor-by-tensor access to a checkpoint's weights.
- :func:`parse_lora_spec` / :class:`LoraSpec` / :func:`merged_source`: PEFT LoRA adapters merged while
  streaming (``convert --lora``); :func:`write_hf_checkpoint` writes a merged checkpoint (``quantize merge``).

Architectures live one per module in :mod:`gguf_forge.convert.arch`; tokenizers in
:mod:`.tokenizer` with pre-tokenizer detection in :mod:`.pretokenizer`.
"""

from .arch import supported as supported_architectures
from .checkpoint import Checkpoint
from .converter import OUTTYPES, ConvertResult, convert
from .hf_writer import write_hf_checkpoint
from .lora import Adapter, LoraSpec, MergedCheckpoint, merged_source, parse_lora_spec
from .overrides import KVOverride, parse_override
from .resolve import resolve_model

__all__ = [
    "Adapter", "LoraSpec", "MergedCheckpoint", "merged_source", "parse_lora_spec", "write_hf_checkpoint",
    "Checkpoint", "ConvertResult", "KVOverride", "OUTTYPES", "convert", "parse_override", "resolve_model",
    "supported_architectures",
]
