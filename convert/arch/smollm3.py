"""SmolLM3 (``SmolLM3ForCausalLM``) -> GGUF ``smollm3``.

The llama family's layout (interleaved rope: Q/K rows permuted as for ``llama``) with layers that use no rope
at all. transformers reads the pattern from ``no_rope_layers`` (1: rope, 0: none; default from
``no_rope_layer_interval``); llama.cpp's ``smollm3`` hard-codes it: every 4th layer (``(il + 1) % 4 == 0``) skips
rope, and no GGUF key changes that. A config whose pattern differs is refused rather than converted into a
model that computes something else. llama.cpp's smollm3 also has no sliding window and no MLP biases.
"""

from __future__ import annotations

import gguf

from ...errors import ForgeError
from . import register
from .llama import Llama

#: llama.cpp's fixed ``n_no_rope_layer_step`` for smollm3
NO_ROPE_STEP = 4


def no_rope_pattern(config: dict, n_layer: int) -> list[int]:
    """transformers' ``no_rope_layers`` (1: the layer uses rope), from the list or from the interval."""
    layers = config.get("no_rope_layers")
    if layers is None:
        interval = config.get("no_rope_layer_interval", NO_ROPE_STEP)
        if not isinstance(interval, int) or isinstance(interval, bool) or interval <= 0:
            raise ForgeError(f"config.json: no_rope_layer_interval must be a positive integer, got {interval!r}")
        return [int((i + 1) % interval != 0) for i in range(n_layer)]
    if not isinstance(layers, list) or len(layers) != n_layer or any(v not in (0, 1) or isinstance(v, bool)
                                                                      for v in layers):
        raise ForgeError(f"config.json: no_rope_layers must be {n_layer} values of 0 or 1 (one per layer), "
                         f"got {str(layers)[:60]}")
    return list(layers)


@register("SmolLM3ForCausalLM")
class SmolLM3(Llama):
    gguf_arch = gguf.MODEL_ARCH.SMOLLM3

    def __init__(self, config: dict):
        super().__init__(config)
        pattern = no_rope_pattern(config, self.n_layer)
        llama_cpp = [int((i + 1) % NO_ROPE_STEP != 0) for i in range(self.n_layer)]
        if pattern != llama_cpp:
            first = next(i for i, (a, b) in enumerate(zip(pattern, llama_cpp)) if a != b)
            raise ForgeError(
                f"config.json: no_rope_layers puts {'no ' if not pattern[first] else ''}rope on layer {first}, but "
                f"llama.cpp's smollm3 skips rope on every {NO_ROPE_STEP}th layer exactly (layers 3, 7, ...); the "
                "converted model would compute something else")
        if config.get("use_sliding_window") and config.get("sliding_window"):
            raise ForgeError("config.json: use_sliding_window is set, which llama.cpp's smollm3 does not apply")
        if config.get("mlp_bias"):
            raise ForgeError("config.json: mlp_bias is set, but llama.cpp's smollm3 loads no MLP biases")
