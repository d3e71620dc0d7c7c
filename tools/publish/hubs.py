"""The hubs ``quantize publish`` can upload to, by ``--hub`` name: the one place a new hub is registered.

Adding a hub: a module with a :class:`~.base.Hub` subclass, imported here and listed in :data:`HUBS`.
"""

from __future__ import annotations

from .base import Hub
from .huggingface import HuggingFace
from .modelscope import ModelScope

#: every hub by its ``--hub`` name; the first is the default
HUBS: dict[str, type[Hub]] = {hub.name: hub for hub in (HuggingFace, ModelScope)}
