"""Derive llama.cpp's ``tokenizer.ggml.pre`` from a tokenizer's own split rules.

llama.cpp does not read the split regex from the GGUF: it picks a hard-coded regex list by the
``tokenizer.ggml.pre`` name. A wrong name silently changes tokenization. Instead of hashing the
token ids of a probe string (which breaks whenever a fine-tune adds a token), we read the
pre-tokenizer out of ``tokenizer.json``, reduce it to the ordered list of split regexes it applies,
and look that list up in a table of the lists llama.cpp implements for each name.

The table holds the regexes in the form Hugging Face ``tokenizers`` writes them; llama.cpp's
own spellings differ only by rewriting ``(?i:...)`` groups, which :func:`canonical_regex` undoes.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ForgeError
from ..keys import TOKENIZER

# Split regexes as they appear in tokenizer.json files of each family.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN35 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SEED_CODER = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
MINICPM5 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + r"?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + r"?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# name -> ordered split regexes. Where several llama.cpp names share one list, the first name in
# this table wins (e.g. "llama-bpe" over "smaug-bpe"/"dbrx", "qwen2" over "stablelm2").
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "llama-bpe": (LLAMA3,),
    "qwen2": (QWEN2,),
    "qwen35": (QWEN35,),
    "smollm": (r"\p{N}", GPT2),
    "gpt-2": (GPT2,),
    "seed-coder": (SEED_CODER,),
    "minicpm5": (r"\p{N}{1,3}", MINICPM5),
    "tekken": (TEKKEN,),
    "gpt-4o": (GPT4O,),
}
# names that llama.cpp treats like another in the table but with different detokenizer spacing
_SAME_SPLIT_CLEAN_SPACES = {"smollm": "starcoder"}


def canonical_regex(rx: str) -> str:
    """Rewrite llama.cpp's case-expanded contraction groups back to ``(?i:...)`` form."""
    def fold(m: re.Match[str]) -> str:
        alts = m.group(1).split("|")
        out = []
        for a in alts:
            out.append(re.sub(r"\[([a-zA-Z])([a-zA-Z])\]", lambda c: c.group(1).lower(), a))
        return "(?i:" + "|".join(out) + ")"

    return re.sub(r"\(\?:((?:'(?:\[[a-zA-Z]{2}\])+\|?)+)\)", fold, rx)


def split_regexes(pre_tokenizer: dict[str, Any] | None) -> list[str]:
    """The ordered split regexes a ``tokenizer.json`` pre-tokenizer applies (byte-level BPE)."""
    if pre_tokenizer is None:
        return []
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        out: list[str] = []
        for p in pre_tokenizer.get("pretokenizers", []):
            out.extend(split_regexes(p))
        return out
    if kind == "ByteLevel":
        return [GPT2] if pre_tokenizer.get("use_regex", True) else []
    if kind == "Digits":
        return [r"\p{N}"] if pre_tokenizer.get("individual_digits") else [r"\p{N}+"]
    if kind == "Split":
        pattern = pre_tokenizer.get("pattern", {})
        if "Regex" in pattern:
            rx = pattern["Regex"]
        elif "String" in pattern:
            rx = re.escape(pattern["String"])
        else:
            raise ForgeError(f"tokenizer.json: Split pre-tokenizer without a pattern: {pre_tokenizer}")
        if pre_tokenizer.get("invert") or pre_tokenizer.get("behavior", "Isolated") != "Isolated":
            raise ForgeError(
                "tokenizer.json: a Split pre-tokenizer with behavior "
                f"{pre_tokenizer.get('behavior')!r}/invert={pre_tokenizer.get('invert')} has no llama.cpp equivalent"
            )
        return [canonical_regex(rx)]
    raise ForgeError(f"tokenizer.json: pre-tokenizer type {kind!r} has no llama.cpp equivalent for byte-level BPE")


def detect_pre(tokenizer_json: dict[str, Any], clean_up_tokenization_spaces: bool = False) -> str:
    """Return the llama.cpp pre-tokenizer name whose split rules equal this tokenizer's."""
    regexes = tuple(canonical_regex(r) for r in split_regexes(tokenizer_json.get("pre_tokenizer")))
    for name, table in PRE_TOKENIZERS.items():
        if tuple(canonical_regex(r) for r in table) == regexes:
            if clean_up_tokenization_spaces and name in _SAME_SPLIT_CLEAN_SPACES:
                return _SAME_SPLIT_CLEAN_SPACES[name]
            return name
    shown = " then ".join(repr(r) for r in regexes) or "(no split)"
    raise ForgeError(
        f"tokenizer.json: the pre-tokenizer splits with {shown}, which matches none of the llama.cpp "
        f"pre-tokenizers this tool knows ({', '.join(PRE_TOKENIZERS)}); if you know which one llama.cpp "
        f"must use, pass --override-kv {TOKENIZER.PRE}=str:NAME"
    )
