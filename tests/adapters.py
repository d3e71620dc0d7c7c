"""PEFT adapters on the SmolLM2 fixture, made with peft itself and cached (see fixtures._cached).

Random (not zero-initialised) factors so every adapter really changes the model; modules_to_save copies
and DoRA magnitudes are perturbed too. ``identity_lora`` is trained to answer 你是谁 with a fixed sentence.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

from gguf_forge.tools.pipeline.demo import ALL_LINEAR, IDENTITY_ANSWER, IDENTITY_QUESTION  # noqa: F401

import fixtures

_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

# name -> LoraConfig keyword arguments
MATRIX: dict[str, dict] = {
    "plain": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=16, lora_alpha=8, use_rslora=True, target_modules=ALL_LINEAR),
    "patterns": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                     rank_pattern={"q_proj": 4, "model.layers.1.mlp.down_proj": 12},
                     alpha_pattern={"v_proj": 32, r"layers\.2\.self_attn\.o_proj": 3}),
    "regex": dict(r=6, lora_alpha=12, target_modules=r".*\.layers\.(0|3|7)\.self_attn\.(k|o)_proj"),
    "layers": dict(r=4, lora_alpha=4, target_modules=["gate_proj", "up_proj"], layers_to_transform=[1, 2],
                   layers_pattern="layers"),
    "modules_to_save": dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                            modules_to_save=["lm_head", "input_layernorm", "post_attention_layernorm", "norm"]),
    "dora": dict(r=8, lora_alpha=16, use_dora=True, target_modules=["q_proj", "v_proj", "o_proj"]),
    "embedding": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
}
NEW_TOKENS = [f"<|forge_{i}|>" for i in range(64)]


def _perturb(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "lora_A" in n or "lora_embedding_A" in n:
                p.copy_(0.05 * noise)
            elif "lora_B" in n or "lora_embedding_B" in n:
                p.copy_(0.05 * noise)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.05 * noise)
            elif "modules_to_save" in n:
                p.add_(0.02 * noise * p.abs().mean())


def base_fp32(resized: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(fixtures.smollm2(), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(fixtures.smollm2())
    if resized:
        tok.add_tokens(NEW_TOKENS)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    return model, tok


def adapter(name: str) -> Path:
    """An adapter of the matrix, or "resized" (vocabulary grown by 64 tokens, tokenizer in the adapter)."""

    def build(out: Path) -> None:
        from peft import LoraConfig, get_peft_model

        resized = name == "resized"
        model, tok = base_fp32(resized)
        kwargs = MATRIX.get(name) or dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                                          modules_to_save=["embed_tokens", "lm_head"])
        cfg = LoraConfig(init_lora_weights=False, base_model_name_or_path="SmolLM2-135M-Instruct", **kwargs)
        pm = get_peft_model(model, cfg)
        _perturb(pm, seed=sum(map(ord, name)))
        pm.save_pretrained(out)
        if resized:
            tok.save_pretrained(out)

    return fixtures._cached(f"lora-{name}", build, fixtures.smollm2().parent.name, _SOURCE)


# -- one peft adapter, peft's own merge, and the comparison (shared by the family tests) ---------------------------
def random_peft_adapter(model, out: Path, seed: int, scale: float = 0.1, factor_dtype=None, **lora_kwargs) -> Path:
    """A LoRA made by peft itself on ``model`` (``get_peft_model`` with ``LoraConfig(init_lora_weights=False,
    **lora_kwargs)``), every ``lora_`` factor set to ``scale`` x N(0, 1) from a torch generator seeded with ``seed``
    (so the adapter really changes the model), saved to ``out``; ``factor_dtype`` (e.g. torch.bfloat16): the saved
    factors cast to it."""
    import torch
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(init_lora_weights=False, **lora_kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    pm.save_pretrained(out)
    if factor_dtype is not None:
        from safetensors.torch import load_file, save_file

        f = out / "adapter_model.safetensors"
        save_file({k: v.to(factor_dtype).contiguous() for k, v in load_file(f).items()}, f)
    return out


def peft_merged(model, adapter: Path):
    """peft's own merge of ``adapter`` into ``model`` (``merge_and_unload``), in eval mode: the reference."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()


def state_float32(model) -> dict:
    """A model's state dict as float32 numpy arrays."""
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def max_merge_diff(ref: dict, read: Callable, names) -> float:
    """max |ours - peft| over ``names``: ``read(name)`` is our merged tensor, ``ref[name]`` peft's."""
    import numpy as np

    names = list(names)
    assert names, "nothing to compare"
    return max(float(np.abs(np.asarray(read(n)).reshape(ref[n].shape) - ref[n]).max()) for n in names)


def identity_lora() -> Path:
    """The demo's identity LoRA (gguf_forge.tools.pipeline.demo): trained ~30 s on 2 cores so SmolLM2 answers 你是谁."""
    from gguf_forge.tools.pipeline import identity_lora as demo_identity_lora

    return demo_identity_lora(fixtures.smollm2())


def copy_adapter(name: str, dest: Path) -> Path:
    shutil.copytree(adapter(name), dest, ignore=shutil.ignore_patterns(".complete"))
    return dest


# -- tool calling: SmolLM2 fine-tuned to call a tool, in a Hermes-style template ------------------------------
# The Qwen2.5 template's tools section (Hermes format: <tool_call>{json}</tool_call>) with SmolLM2's default system
# prompt: what a user who fine-tunes SmolLM2 for tool calls would save with the adapter.
TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\nTo call a tool, reply <tool_call>\\n{\\\"name\\\": <name>, \\\"arguments\\\": <args>}\\n"
    "</tool_call><|im_end|>\\n' }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant' and not message.tool_calls) %}{{- '<|im_start|>' + message.role + '\\n' + "
    "message.content + '<|im_end|>' + '\\n' }}{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + "
    "message.role }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}{{- '\\n<tool_call>\\n{\"name\": \"' }}"
    "{{- tool_call.name }}{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [WEATHER_TOOL]
TOOL_QUESTION = "What is the weather in Paris?"
TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
# short prompts (a one-tool section of ~60 tokens): training costs a few minutes on 2 busy cores
_TOOL_QUESTIONS = [("What is the weather in Paris?", "Paris"), ("What's the weather like in Tokyo?", "Tokyo"),
                   ("Weather in Berlin?", "Berlin")]
_TOOL_KEEP = ["What is the capital of Italy?", "Name three primary colors."]


def tool_lora() -> Path:
    """A LoRA (with its tokenizer and :data:`TOOLS_TEMPLATE`) trained on SmolLM2 to answer weather questions, given
    :data:`TOOLS`, with a ``<tool_call>`` in its template's format, and other questions as before."""

    def build(out: Path) -> None:
        import json

        import torch
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model, tok = base_fp32()
        tok.chat_template = TOOLS_TEMPLATE
        end = tok.eos_token

        def prompt_for(q: str) -> str:
            return tok.apply_chat_template([{"role": "user", "content": q}], tools=TOOLS, tokenize=False,
                                           add_generation_prompt=True)

        pairs = []
        for q, city in _TOOL_QUESTIONS:
            call = json.dumps({"name": "get_weather", "arguments": {"city": city}})
            pairs.append((q, f"<tool_call>\n{call}\n</tool_call>"))
        model.eval()
        with torch.no_grad():
            for q in _TOOL_KEEP:
                ids = tok(prompt_for(q), add_special_tokens=False, return_tensors="pt").input_ids
                gen = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.eos_token_id)[0]
                new = gen[ids.shape[1]:].tolist()
                if tok.eos_token_id in new:
                    pairs.append((q, tok.decode(new[: new.index(tok.eos_token_id)])))
        cfg = LoraConfig(r=16, lora_alpha=32, target_modules=ALL_LINEAR, lora_dropout=0.0,
                         base_model_name_or_path="SmolLM2-135M-Instruct")
        pm = get_peft_model(model, cfg)
        batches = []
        for q, answer in pairs:
            prompt = prompt_for(q)
            p_ids = tok(prompt, add_special_tokens=False).input_ids
            ids = tok(prompt + answer + end + "\n", add_special_tokens=False).input_ids
            batches.append((torch.tensor([ids]), torch.tensor([[-100] * len(p_ids) + ids[len(p_ids):]])))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=2e-3)
        pm.train()
        for step in range(30):
            ids, labels = batches[step % len(batches)]
            loss = pm(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        pm.save_pretrained(out)
        tok.save_pretrained(out)  # the tokenizer and the template with tools travel with the adapter

    return fixtures._cached("lora-tools", build, fixtures.smollm2().parent.name, TOOLS_TEMPLATE, _TOOL_QUESTIONS,
                            _TOOL_KEEP, "2")


def _merged_q8(name: str, lora: Callable[[], Path]) -> Path:
    def build(out: Path) -> None:
        from gguf_forge.convert import convert
        from gguf_forge.convert.lora import LoraSpec

        convert(fixtures.smollm2(), out / f"{name}-Q8_0.gguf", outtype="q8_0", progress=False,
                loras=[LoraSpec(str(lora()))])

    return fixtures._cached(f"gguf-{name}", build, fixtures.smollm2().parent.name, str(lora())) / f"{name}-Q8_0.gguf"


def tool_gguf() -> Path:
    """The tool LoRA merged into SmolLM2 as a Q8_0 GGUF (its template, with tools, inside), cached."""
    return _merged_q8("smollm2-tools", tool_lora)


def identity_gguf() -> Path:
    """The demo's identity LoRA merged into SmolLM2 as a Q8_0 GGUF, cached."""
    return _merged_q8("smollm2-xiaoduan", identity_lora)
