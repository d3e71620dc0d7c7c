"""Publishing a pipeline folder to a model hub, and llama.cpp's gguf-split shards.

Public surface:

- :func:`publish` -> :class:`PublishPlan` of :class:`PlannedFile` (``quantize publish``); :func:`read_manifest`.
- :data:`HUBS`: the hubs by ``--hub`` name, each a :class:`Hub` subclass in a module of its own
  (:mod:`.huggingface`, :mod:`.modelscope`); a new hub is one module plus one entry in :mod:`.hubs`.
- :func:`split_gguf` / :func:`plan_split` -> :class:`Shard`: llama.cpp ``gguf-split`` shards.
"""

from .base import Hub, PlannedFile
from .hubs import HUBS
from .publish import PublishPlan, publish, read_manifest
from .split import Shard, plan_split, split_gguf

__all__ = ["HUBS", "Hub", "PlannedFile", "PublishPlan", "Shard", "plan_split", "publish", "read_manifest",
           "split_gguf"]
