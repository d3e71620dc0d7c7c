"""gguf-forge: from a fine-tuned Hugging Face model to a GGUF that runs on a laptop.

The import package holds four subpackages, one per stage:

- ``gguf_forge.convert``    Hugging Face reading, (LoRA merge,) GGUF writing, tokenizers
- ``gguf_forge.quant``      quantization, importance matrix, quality evaluation
- ``gguf_forge.modelfiles`` chat templates -> Ollama Modelfile / LM Studio preset
- ``gguf_forge.tools``      the ``quantize`` command line, chat and smoke tests, publishing

Errors a user can fix are raised as :class:`ForgeError`; the CLI prints them as one line
and exits with status 2.
"""

from .errors import ForgeError

__version__ = "0.1.0"
__all__ = ["ForgeError", "__version__"]
