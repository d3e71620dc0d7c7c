"""Quantization, importance matrices and quality evaluation (not yet implemented).

Planned public surface: ``quantize_gguf``, ``compute_imatrix``, ``evaluate``.
"""
