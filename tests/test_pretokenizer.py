"""Pre-tokenizer names come from the tokenizer's split rules, whatever tokens a fine-tune adds."""

from __future__ import annotations

import pytest

from gguf_forge import ForgeError
from gguf_forge.convert.pretokenizer import GPT2, LLAMA3, QWEN2, detect_pre


def split(rx: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False}


BYTELEVEL_NO_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


@pytest.mark.parametrize("pre_tokenizer,name", [
    ({"type": "Sequence", "pretokenizers": [split(LLAMA3), BYTELEVEL_NO_REGEX]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [split(QWEN2), BYTELEVEL_NO_REGEX]}, "qwen2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    # llama.cpp's own spelling of the Llama 3 regex (case-expanded contractions) maps back too
    ({"type": "Sequence", "pretokenizers": [split(LLAMA3.replace(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)", "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])")),
        BYTELEVEL_NO_REGEX]}, "llama-bpe"),
])
def test_known_split_rules(pre_tokenizer, name):
    assert detect_pre({"pre_tokenizer": pre_tokenizer}) == name


def test_same_split_different_detokenizer_spacing():
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                    {"type": "ByteLevel", "use_regex": True}]}
    assert detect_pre({"pre_tokenizer": smollm}, clean_up_tokenization_spaces=True) == "starcoder"


def test_unknown_split_rule_is_an_error_naming_the_way_out():
    custom = {"type": "Sequence", "pretokenizers": [split(r"\p{L}+|\p{N}{1,4}"), BYTELEVEL_NO_REGEX]}
    with pytest.raises(ForgeError, match="--override-kv tokenizer.ggml.pre=str:"):
        detect_pre({"pre_tokenizer": custom})


def test_gpt2_regex_spelled_out_is_gpt2():
    assert detect_pre({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(GPT2), BYTELEVEL_NO_REGEX]}}) == "gpt-2"
