"""Chat templates -> Ollama Modelfile and LM Studio preset, proven equal by rendering.

Public surface:

- :func:`write_modelfile` (-> :class:`ModelfileResult`): read a GGUF (or a Hugging Face folder plus the GGUF FROM
  points at), translate its Jinja chat template (or the one given: a named template, a ``.jinja`` file or Jinja
  source, see :func:`gguf_forge.chat_template.load`) to an Ollama Go template over ``.Messages``, check on a
  conversation suite that both render the same string, and write ``Modelfile`` and ``<name>.preset.json`` (plus the
  legacy LM Studio format on request), atomically. A template that cannot be reproduced exactly is a ForgeError.
- :func:`translate` (-> :class:`Translation`): the translation alone (Go template, stops, SYSTEM, warnings).
- :func:`ollama_create`: run ``ollama create NAME -f Modelfile`` when ollama is installed.

Named templates, loading and rendering live in :mod:`gguf_forge.chat_template`.
"""

from .translate import Translation, translate
from .writer import ModelfileResult, ollama_create, write_modelfile

__all__ = ["ModelfileResult", "Translation", "ollama_create", "translate", "write_modelfile"]
