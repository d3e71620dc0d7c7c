"""``python -m gguf_forge.tools.cli``: the ``quantize`` command."""

from .main import main

main()
