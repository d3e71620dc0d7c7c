"""The jobs built on the library: one subpackage each.

- :mod:`gguf_forge.tools.cli`       the ``quantize`` command line: every command, shared options, one error boundary
- :mod:`gguf_forge.tools.pipeline`  the main job (``merge-convert``) as steps, the model card, the demo
- :mod:`gguf_forge.tools.publish`   uploading a pipeline folder to a model hub, llama.cpp's gguf-split shards
- :mod:`gguf_forge.tools.chat`      chatting with a GGUF on the CPU and smoke-testing its replies

Imports run one way: ``cli`` -> ``pipeline`` / ``publish`` -> ``chat`` -> ``quant`` / ``modelfiles`` / ``convert``
-> ``gguf_forge.runtime`` -> the core (``gguf_forge.errors``, ``files``, ``keys``, ``chat_template``).
"""
