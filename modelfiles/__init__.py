"""Chat templates -> Ollama Modelfile and LM Studio preset (not yet implemented).

Planned public surface: ``write_modelfile``, ``write_lmstudio_preset``.
"""
