"""The text model inside a multimodal (``...ForConditionalGeneration``) checkpoint.

Such a ``config.json`` nests the language model's settings under ``text_config`` and its tensors under
``model.language_model.`` (transformers 5) or ``language_model.model.`` / ``language_model.lm_head.`` (older
saves). :class:`TextPart` flattens the config, renames the text tensors to the plain causal-LM names and leaves
every other component (vision or audio tower, projector) out, reporting it once as a warning rather than
refusing: llama.cpp runs those from a separate ``mmproj`` file, which this tool does not write.
"""

from __future__ import annotations

from ...errors import ForgeError

#: where the text model's tensors live in multimodal checkpoints -> their causal-LM names
TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)


def text_config(config: dict) -> dict:
    """``config`` with ``text_config`` merged over it (top-level architectures and tying kept)."""
    text = config.get("text_config")
    if text is None:
        return config
    if not isinstance(text, dict):
        raise ForgeError(f"config.json: text_config must be an object, got {type(text).__name__}")
    merged = dict(text)
    merged["architectures"] = config.get("architectures")
    if config.get("tie_word_embeddings") is not None:
        merged["tie_word_embeddings"] = config["tie_word_embeddings"]
    merged["_multimodal"] = True
    return merged


class TextPart:
    """Mixin (before the text architecture's class): convert the text model of a multimodal checkpoint."""

    def __init__(self, config: dict):
        super().__init__(text_config(config))  # type: ignore[call-arg]
        self._left_out: dict[str, int] = {}

    def gguf_name(self, hf_name: str) -> str | None:
        if not self.config.get("_multimodal"):  # type: ignore[attr-defined]
            return super().gguf_name(hf_name)  # type: ignore[misc]
        for prefix, plain in TEXT_PREFIXES:
            if hf_name.startswith(prefix):
                return super().gguf_name(plain + hf_name[len(prefix):])  # type: ignore[misc]
        if hf_name.startswith("lm_head."):
            return super().gguf_name(hf_name)  # type: ignore[misc]
        parts = hf_name.split(".")
        part = ".".join(parts[:2]) if parts[0] == "model" and len(parts) > 2 else parts[0]
        self._left_out[part] = self._left_out.get(part, 0) + 1
        return None

    @property
    def warnings(self) -> list[str]:
        if not self._left_out:
            return []
        parts = ", ".join(f"{p} ({n} tensors)" for p, n in self._left_out.items())
        arch = (self.config.get("architectures") or ["the model"])[0]  # type: ignore[attr-defined]
        return [f"{arch}: only the text model is converted; left out: {parts} (llama.cpp runs vision/audio "
                "towers from a separate mmproj file, which this tool does not write)"]
