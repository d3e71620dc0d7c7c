"""GGUF metadata keys: gguf-py's ``gguf.Keys`` for everything llama.cpp defines, plus the few gguf-forge and
llama.cpp's tools write that gguf-py does not name. Code refers to keys through this module, never as literals.

Per-architecture keys are templates (``"{arch}.context_length"``): :func:`arch_key` fills them in.
"""

from __future__ import annotations

from gguf import Keys

GENERAL = Keys.General
LLM = Keys.LLM
ROPE = Keys.Rope
ATTENTION = Keys.Attention
TOKENIZER = Keys.Tokenizer
SPLIT = Keys.Split


class IMatrix:
    """llama.cpp's GGUF imatrix files (``llama-imatrix``'s output)."""

    DATASETS = "imatrix.datasets"
    CHUNK_COUNT = "imatrix.chunk_count"
    CHUNK_SIZE = "imatrix.chunk_size"


class Quantize:
    """Provenance keys ``llama-quantize`` writes into a quant made with an importance matrix, and gguf-forge's."""

    IMATRIX_FILE = "quantize.imatrix.file"
    IMATRIX_DATASET = "quantize.imatrix.dataset"
    IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
    IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"
    RECIPE = "quantize.forge.recipe"  # gguf-forge: what made the file, so an identical re-run is skipped


def arch_key(template: str, arch: str) -> str:
    """``arch_key(LLM.CONTEXT_LENGTH, "llama")`` -> ``"llama.context_length"``."""
    return template.format(arch=arch)
