"""Tokenizer -> GGUF ``tokenizer.ggml.*`` keys.

Two families are supported:

- byte-level BPE from ``tokenizer.json`` (Llama 3, Qwen, SmolLM, Mistral Nemo...):
  ``tokenizer.ggml.model = "gpt2"`` with ``tokenizer.ggml.pre`` derived from the split rules
  (see :mod:`.pretokenizer`);
- SentencePiece from ``tokenizer.model`` (LLaMA 1/2, Mistral v0.1-v0.3, Gemma):
  ``tokenizer.ggml.model = "llama"`` with scores and piece types.

Special token ids, ``add_bos``/``add_eos``, merges and the chat templates (the default one and every named one,
e.g. Hermes 2 Pro's ``tool_use``: ``tokenizer.chat_template.tool_use``, as llama.cpp's converter writes them) come
through the ``gguf`` package's :class:`gguf.SpecialVocab`; the end-of-turn token is found by rendering the chat template
(:func:`gguf_forge.chat_template.turn_end`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from .. import chat_template
from ..errors import ForgeError
from ..files import read_json_object
from ..keys import TOKENIZER
from .config import is_int, one_line, shown
from .pretokenizer import detect_pre

NORMAL = gguf.TokenType.NORMAL
CONTROL = gguf.TokenType.CONTROL
USER_DEFINED = gguf.TokenType.USER_DEFINED
UNUSED = gguf.TokenType.UNUSED
UNKNOWN = gguf.TokenType.UNKNOWN
BYTE = gguf.TokenType.BYTE


@dataclass
class Vocab:
    """Everything the GGUF needs to know about a tokenizer."""

    model: str  # "gpt2" or "llama"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    pre: str | None = None
    add_space_prefix: bool | None = None
    special: gguf.SpecialVocab | None = None
    eot_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # problems that did not stop the conversion

    def add_to_gguf(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        if self.pre is not None:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        if self.special is not None:
            self.special.add_to_gguf(w, quiet=True)
        if self.eot_id is not None:
            w.add_eot_token_id(self.eot_id)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path)


def _check_tokenizer_json(path: Path, tok: dict[str, Any]) -> None:
    """The parts of ``tokenizer.json`` read here have the types the format gives them."""
    model = tok.get("model", {})
    if not isinstance(model, dict):
        raise ForgeError(f"{path}: model must be an object, got {shown(model)}")
    vocab = model.get("vocab")
    if model.get("type") == "BPE" and not (
            isinstance(vocab, dict) and all(is_int(i) and 0 <= i < 2**31 for i in vocab.values())):
        raise ForgeError(f"{path}: model.vocab must map token texts to non-negative token ids")
    added = tok.get("added_tokens", [])
    if not isinstance(added, list) or not all(
            isinstance(a, dict) and is_int(a.get("id")) and 0 <= a["id"] < 2**31 and isinstance(a.get("content"), str)
            for a in added):
        raise ForgeError(f"{path}: added_tokens must be a list of objects with an id (a non-negative integer) "
                         "and a content (a string)")
    for key in ("pre_tokenizer", "decoder", "normalizer", "post_processor"):
        if tok.get(key) is not None and not isinstance(tok[key], dict):
            raise ForgeError(f"{path}: {key} must be an object or null, got {shown(tok[key])}")


def _is_byte_level(tok: dict[str, Any]) -> bool:
    def has(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has(p) for p in node.get("pretokenizers", []) + node.get("decoders", []))

    return tok.get("model", {}).get("type") == "BPE" and (has(tok.get("pre_tokenizer")) or has(tok.get("decoder")))


def load_vocab(path: Path, n_vocab: int, pre_override: str | None = None) -> Vocab:
    """Build the GGUF vocabulary of the tokenizer in directory ``path``.

    ``n_vocab`` is the model's embedding row count; the token list is padded to it.
    ``pre_override`` skips pre-tokenizer detection (``--override-kv tokenizer.ggml.pre=...``).
    """
    tj_file = path / "tokenizer.json"
    tok_json = _read_json(tj_file) if tj_file.is_file() else None
    spm = (path / "tokenizer.model").is_file()
    if tok_json is None and not spm:
        raise ForgeError(
            f"{path}: no tokenizer.json or tokenizer.model; copy the tokenizer files into the model directory")
    try:
        if tok_json is not None:
            _check_tokenizer_json(tj_file, tok_json)
        if tok_json is not None and _is_byte_level(tok_json):
            vocab = _bpe_vocab(path, tok_json, n_vocab, pre_override)
        elif spm:
            vocab = _spm_vocab(path, tok_json, n_vocab)
        else:
            raise ForgeError(
                f"{tj_file}: tokenizer model {(tok_json.get('model') or {}).get('type')!r} without a byte-level "  # type: ignore
                "pre-tokenizer and no tokenizer.model beside it; only byte-level BPE and SentencePiece are supported"
            )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a shape the checks above missed
        raise ForgeError(f"{tj_file if tok_json is not None else path}: malformed tokenizer ({one_line(e)})") from None
    try:
        vocab.special = gguf.SpecialVocab(path, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise ForgeError(f"{path}: the tokenizer files cannot be read for special tokens and merges "
                         f"({one_line(e)})") from None
    if vocab.model == "gpt2" and not vocab.special.merges:
        raise ForgeError(f"{tj_file}: BPE tokenizer without merges")
    if vocab.model == "gpt2":
        # neither tokenizer_config.json nor a post-processor adds BOS: transformers adds none, but llama.cpp
        # defaults to adding one for some pre-tokenizers (llama-bpe: GLM-4's), so say so explicitly
        vocab.special.add_special_token.setdefault("bos", False)
    _check_chat_templates(path, vocab.special.chat_template)
    # gguf-py reads tokenizer_config.json's template before chat_template.jinja/.json; transformers (and
    # chat_template.templates_from_hf_dir, which the Modelfile and imatrix use) read them the other way round, with
    # additional_chat_templates/NAME.jinja beside chat_template.jinja. Every named template is kept: gguf-py writes
    # a list as tokenizer.chat_template (default), tokenizer.chat_template.NAME and tokenizer.chat_templates
    named = chat_template.templates_from_hf_dir(path)
    if named:
        vocab.special.chat_template = (named["default"] if list(named) == ["default"]
                                       else chat_template.as_named_list(named))
    try:
        vocab.eot_id = find_eot(vocab)
    except ForgeError as e:  # the template cannot render a plain conversation: convert anyway, without an eot
        vocab.warnings.append(f"{e}; no end-of-turn token ({TOKENIZER.EOT_ID}) recorded")
    return vocab


def _added_tokens(tok_json: dict[str, Any] | None, path: Path) -> list[dict[str, Any]]:
    if tok_json is not None:
        return list(tok_json.get("added_tokens", []))
    added = path / "added_tokens.json"
    if added.is_file():
        return [{"id": i, "content": c, "special": True} for c, i in _read_json(added).items()]
    return []


def _bpe_vocab(path: Path, tok_json: dict[str, Any], n_vocab: int, pre_override: str | None) -> Vocab:
    model_vocab: dict[str, int] = tok_json["model"]["vocab"]
    added = {int(a["id"]): a for a in _added_tokens(tok_json, path)}
    size = max([n_vocab, len(model_vocab), max(model_vocab.values(), default=-1) + 1, *(i + 1 for i in added)])
    if size > n_vocab:
        raise ForgeError(
            f"{path / 'tokenizer.json'}: the tokenizer has {size} tokens but the model's embedding has "
            f"{n_vocab} rows; the tokenizer does not belong to these weights"
        )
    tokens: list[str | None] = [None] * size
    types = [NORMAL] * size
    for text, i in model_vocab.items():
        tokens[i] = text
    for i, a in added.items():
        tokens[i] = a["content"]
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = UNUSED
    config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    pre = pre_override or detect_pre(tok_json, bool(config.get("clean_up_tokenization_spaces", False)))
    return Vocab("gpt2", tokens, [int(t) for t in types], pre=pre)  # type: ignore[arg-type]


def _spm_vocab(path: Path, tok_json: dict[str, Any] | None, n_vocab: int) -> Vocab:
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:  # pragma: no cover - sentencepiece is a dependency
        raise ForgeError("the sentencepiece package is needed for tokenizer.model; pip install sentencepiece") from None
    model_file = path / "tokenizer.model"
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
    except Exception:
        raise ForgeError(
            f"{model_file}: not a SentencePiece model (a tiktoken file needs its tokenizer.json)") from None
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(UNKNOWN)
        elif sp.is_control(i):
            types.append(CONTROL)
        elif sp.is_unused(i):
            types.append(UNUSED)
        elif sp.is_byte(i):
            types.append(BYTE)
        elif proto.pieces[i].type == pb.ModelProto.SentencePiece.USER_DEFINED:
            types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
    for a in sorted(_added_tokens(tok_json, path), key=lambda a: int(a["id"])):
        i = int(a["id"])
        if i < len(tokens):
            if a.get("special") and types[i] == NORMAL:
                types[i] = CONTROL
            continue
        if i >= n_vocab:
            raise ForgeError(f"{path}: added token {a['content']!r} has id {i}, but the model's embedding has "
                             f"{n_vocab} rows; the tokenizer does not belong to these weights")
        while len(tokens) < i:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(UNUSED)
        tokens.append(a["content"])
        scores.append(-1000.0)
        types.append(CONTROL if a.get("special") else USER_DEFINED)
    if len(tokens) > n_vocab:
        raise ForgeError(
            f"{model_file}: the tokenizer has {len(tokens)} tokens but the model's embedding has {n_vocab} rows"
        )
    while len(tokens) < n_vocab:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    add_prefix = proto.normalizer_spec.add_dummy_prefix
    return Vocab("llama", tokens, [int(t) for t in types], scores=scores, add_space_prefix=add_prefix)


def _check_chat_templates(path: Path, value: Any) -> None:
    """The chat template found in ``path`` (tokenizer_config.json, chat_template.json or .jinja) is text, or a list
    of named templates (``{"name": ..., "template": ...}``), as the GGUF stores them."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), (str, type(None)))
            for t in value):
        raise ForgeError(f"{path}: chat_template must be text or a list of {{\"name\": ..., \"template\": ...}}, "
                         f"got {shown(value)}")


def find_eot(vocab: Vocab) -> int | None:
    """The end-of-turn token: the longest control token the chat template puts right after a reply.

    Returns ``None`` when there is no template or no control token there. A template that fails on a plain
    [user, assistant] conversation is a ForgeError (see :func:`gguf_forge.chat_template.turn_end`).
    """
    special = vocab.special
    template = chat_template.pick_default(special.chat_template if special is not None else None)
    if template is None:
        return None
    ids = special.special_token_ids if special is not None else {}
    token_text = {k: vocab.tokens[v] for k, v in ids.items() if 0 <= v < len(vocab.tokens)}
    after = chat_template.turn_end(template, bos_token=token_text.get("bos", ""), eos_token=token_text.get("eos", ""))
    if after is None:
        return None
    best: tuple[int, int] | None = None
    for i, (text, typ) in enumerate(zip(vocab.tokens, vocab.types)):
        if typ == CONTROL and text and after.startswith(text):
            if best is None or len(text) > best[1]:
                best = (i, len(text))
    return best[0] if best else None
