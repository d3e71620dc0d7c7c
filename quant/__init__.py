"""Quantization, importance matrices and quality evaluation.

Public surface:

- :func:`quantize` (``quantize quant``): llama.cpp's own quantizer in-process, every llama.cpp type, with
  imatrix, per-tensor type overrides, ``<basename>-<TYPE>[-im].gguf`` names, skip-if-identical.
- :func:`compute_imatrix` (``quantize imatrix``): llama.cpp's importance statistic, by llama.cpp itself on a
  memory-mapped GGUF (``engine="llama"``, :mod:`.imatrix_llama`: the evaluation callback, MUL_MAT and MUL_MAT_ID)
  or in torch on the Hugging Face model (``engine="torch"``, placed by accelerate's device map with
  :mod:`.placement`: several GPUs, CPU and disk offload); LoRA merged on the fly; plain text or JSONL
  chats rendered with the chat template.
- :class:`IMatrix`, :func:`read_imatrix`, :func:`write_gguf`, :func:`write_legacy`: llama.cpp's two imatrix
  formats.
- :func:`evaluate` (``quantize eval``): perplexity, mean/99th-percentile KLD and same-top-token rate.

``data/calibration.txt`` is the default calibration text (Chinese, English, code), written for gguf-forge.
"""

from .evaluate import EvalReport, evaluate
from .imatrix import compute_imatrix, default_calibration_text
from .imatrix_file import IMatrix, read_imatrix, write_gguf, write_legacy
from .quantize import FTYPES, NEEDS_IMATRIX, QuantResult, parse_types, quantize

__all__ = [
    "EvalReport", "FTYPES", "IMatrix", "NEEDS_IMATRIX", "QuantResult", "compute_imatrix",
    "default_calibration_text", "evaluate", "parse_types", "quantize", "read_imatrix", "write_gguf",
    "write_legacy",
]
