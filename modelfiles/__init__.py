"""Chat templates -> Ollama Modelfile and LM Studio preset, proven equal by rendering.

Public surface:

- :func:`write_modelfile` (-> :class:`ModelfileResult`): read a GGUF (or a Hugging Face folder plus the GGUF FROM
  points at), translate its Jinja chat template to an Ollama Go template over ``.Messages``, check on a
  conversation suite that both render the same string, and write ``Modelfile`` and ``<name>.preset.json`` (plus the
  legacy LM Studio format on request), atomically. A template that cannot be reproduced exactly is a ForgeError.
- :func:`load_template` / :func:`named_templates`: the named Jinja templates shipped here (``llama3``, ``chatml``,
  ``gemma``, ``mistral``, ``llama2``, ``phi3``, ``zephyr``, ``firefly-llama3``) or a ``.jinja`` file.
- :func:`translate` (-> :class:`Translation`): the translation alone (Go template, stops, SYSTEM, warnings).
- :func:`ollama_create`: run ``ollama create NAME -f Modelfile`` when ollama is installed.
"""

from .jinja import load_template, named_templates
from .translate import Translation, translate
from .writer import ModelfileResult, ollama_create, write_modelfile

__all__ = ["ModelfileResult", "Translation", "load_template", "named_templates", "ollama_create", "translate",
           "write_modelfile"]
