"""The GGUF we write tokenizes exactly like the Hugging Face tokenizer it came from (through llama.cpp)."""

from __future__ import annotations

import pytest

from fixtures import FIXTURES, PROBE, fixture_dir

CHAT = [
    {"role": "system", "content": "你是一个乐于助人的助手。You're helpful."},
    {"role": "user", "content": "你是谁？Who are you? 3333+777=?"},
    {"role": "assistant", "content": "我是一个助手。I'm an assistant; 4110."},
    {"role": "user", "content": "  spaces around  "},
]


def probe_for(tok) -> str:
    """The multilingual probe, a rendered chat (special tokens next to text) and every special token."""
    text = PROBE.read_text(encoding="utf-8")
    try:
        chat = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    except Exception:
        chat = ""
    specials = " ".join(t for t in tok.all_special_tokens) + "".join(tok.all_special_tokens)
    return f"{text}\n{chat}\n{specials}\n"


def without_known_llama_cpp_difference(text: str, hf, llm) -> str:
    """Remove the inputs on which llama.cpp's own SentencePiece tokenizer differs whatever the converter does.

    Named exception (SentencePiece vocabularies only): text directly after a special-token string
    (``<s>[INST]``, ``<s> </s>``). llama.cpp prefixes every text fragment that follows a special token with a
    space of its own (the "legacy" LLaMA behaviour); Hugging Face's tokenizer does not, so the first id of
    that fragment differs (``▁[`` vs ``[``). A GGUF made by llama.cpp's reference converter shows the same
    difference (see the issue's closing note). For SentencePiece the lines holding special-token strings are
    therefore left out here, and each special token is checked on its own in the test.
    """
    if llm.metadata.get("tokenizer.ggml.model") != "llama":
        return text
    specials = [t for t in hf.all_special_tokens if t]
    return "\n".join(line for line in text.split("\n") if not any(t in line for t in specials))


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_llama_cpp_tokenizes_like_hugging_face(name, converted):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(fixture_dir(name))
    gguf_path = converted(name, "f32")
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    text = probe_for(hf)
    assert len(text) >= 5000
    text = without_known_llama_cpp_difference(text, hf, llm)
    want = hf.encode(text, add_special_tokens=False)
    got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    if want != got:
        i = first_difference(want, got)
        ctx = hf.decode(want[max(0, i - 5): i + 5])
        pytest.fail(
            f"{name}: token {i} of {len(want)} differs (HF {want[i:i + 6]} vs llama.cpp {got[i:i + 6]}) near {ctx!r}"
        )
    # every special token is recognised as itself
    for t in hf.all_special_tokens:
        assert llm.tokenize(t.encode(), add_bos=False, special=True) == [hf.convert_tokens_to_ids(t)], t
    # the BOS convention survives too: llama.cpp adds BOS exactly when the HF tokenizer does
    with_special = hf.encode("你好", add_special_tokens=True)
    assert llm.tokenize("你好".encode(), add_bos=True, special=True) == with_special


@pytest.mark.slow
def test_llama3_pre_tokenizer_is_llama_bpe(converted):
    from gguf_forge.convert import inspect_gguf

    info = inspect_gguf(converted("llama3", "f32"))
    assert info["tokenizer"]["pre"] == "llama-bpe"
    assert info["tokenizer"]["eot"]["text"] == "<|eot_id|>"
    assert info["tokenizer"]["bos"]["id"] == 128000


@pytest.mark.slow
@pytest.mark.parametrize("name,pre", [("smollm2", "smollm"), ("qwen2", "qwen2"), ("qwen3", "qwen2")])
def test_pre_tokenizer_and_end_of_turn(name, pre, converted):
    from gguf_forge.convert import inspect_gguf

    info = inspect_gguf(converted(name, "f32"))
    assert info["tokenizer"]["pre"] == pre
    assert info["tokenizer"]["eot"]["text"] == "<|im_end|>"
    assert info["chat_template"] and "<|im_start|>" in info["chat_template"]
