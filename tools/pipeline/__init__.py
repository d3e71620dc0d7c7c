"""The main job, ``quantize merge-convert``, as a list of steps; the model card; ``quantize demo``.

Public surface:

- :class:`PipelineConfig` -> :func:`run_pipeline` -> :class:`PipelineResult`.
- :func:`model_card` / :func:`card_front_matter`: the hub model card written beside the files.
- :func:`run_demo` (``quantize demo``), :func:`identity_lora`: the embedded demo and its cached identity LoRA.
"""

from .card import card_front_matter, model_card
from .demo import DemoResult, identity_lora, run_demo
from .run import PipelineConfig, PipelineResult, run_pipeline

__all__ = ["DemoResult", "PipelineConfig", "PipelineResult", "card_front_matter", "identity_lora", "model_card",
           "run_demo", "run_pipeline"]
