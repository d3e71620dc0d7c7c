"""Publishing a pipeline folder to a model hub, and llama.cpp's gguf-split shards.

Public surface:

- :func:`publish` -> :class:`PublishPlan` (``quantize publish``).
- :data:`HUBS`: the hubs by ``--hub`` name.
- :func:`split_gguf` / :func:`plan_split`: llama.cpp ``gguf-split`` shards.
"""

from .publish import HUBS, PlannedFile, PublishPlan, publish, read_manifest
from .split import Shard, plan_split, split_gguf

__all__ = ["HUBS", "PlannedFile", "PublishPlan", "Shard", "plan_split", "publish", "read_manifest", "split_gguf"]
