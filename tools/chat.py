"""Chatting with a GGUF on the CPU through llama-cpp-python, with the GGUF's own chat template."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ForgeError


def physical_cores() -> int:
    """Physical core count (llama.cpp's default thread count), falling back to logical CPUs."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def load_model(path: str | Path, n_ctx: int = 2048, threads: int | None = None, **kwargs: Any):
    """Load a GGUF with llama-cpp-python (memory-mapped), as a one-line error when it cannot."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise ForgeError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ForgeError(f"{path}: not a GGUF file")
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or physical_cores(), verbose=False, **kwargs)
    except (ValueError, RuntimeError) as e:
        raise ForgeError(f"{path}: llama.cpp cannot load it ({e}); the file may be truncated or its architecture unsupported") from None


def chat_handler_for(llm) -> Any:
    """A llama-cpp-python chat handler built from the GGUF's own template, stopping on every end-of-turn token."""
    from llama_cpp import llama_cpp as C
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ForgeError("the GGUF has no tokenizer.chat_template; give one with --template")
    vocab = C.llama_model_get_vocab(llm.model)
    eog = [i for i in range(llm.n_vocab()) if C.llama_vocab_is_eog(vocab, i)]

    def text(i: int) -> str:
        return llm.detokenize([i], special=True).decode("utf-8", errors="replace") if i >= 0 else ""

    fmt = Jinja2ChatFormatter(
        template=template,
        eos_token=text(llm.token_eos()),
        bos_token=text(llm.token_bos()),
        stop_token_ids=eog,
    )
    return fmt.to_chat_handler()


def one_turn(path: str | Path, prompt: str, system: str | None = None, max_tokens: int = 128) -> str:
    """Greedy single-turn reply from the GGUF at ``path``."""
    llm = load_model(path)
    handler = chat_handler_for(llm)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    out = handler(llama=llm, messages=messages, temperature=0.0, max_tokens=max_tokens, seed=0)
    return out["choices"][0]["message"]["content"]
