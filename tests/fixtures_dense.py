"""Tiny checkpoints of the dense 2026 families (issue 11), built with transformers' own classes and cached.

Each is a shrunk copy of a real configuration (same rope variant, norms, fusions, layer patterns) with seeded
random weights (see fixtures._random_model) and a real or realistically trained tokenizer:
- phi3: Phi-4-mini shape (LongRoPE, partial rotary 0.75, tied embeddings, GQA), o200k-style ("gpt-4o") BPE;
- smollm3: SmolLM3-3B shape (every 4th layer without rope, tied), the real Llama 3 tokenizer from ../shared;
- glm4: GLM-4-0414 shape (Q/K/V biases, fused gate_up, post norms, partial rotary 0.5), Llama-3-split BPE;
- ministral3 / mistral3_vl: Ministral 3 (YaRN, llama-4 attention temperature), as a text-only
  Ministral3ForCausalLM and as a Mistral3ForConditionalGeneration with a tiny Pixtral vision tower; tekken BPE.
Hidden sizes are 256 (except where a 128k/262k vocabulary would make that large) so Q4_K_M really uses K-quants.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import fixtures
from fixtures import LLAMA3_SPLIT, LLAMA3_TIKTOKEN, _cached, _random_model, _save_model, _write_card, corpus

_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PHI4_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST]' + m['content'] + '[/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% else %}{{ '[SYSTEM_PROMPT]' + m['content'] + "
    "'[/SYSTEM_PROMPT]' }}{% endif %}{% endfor %}"
)


def _bpe_tokenizer(out: Path, split: str, specials: list[str], eos: str, template: str, bos: str | None = None,
                   vocab: int = 3000):
    """A byte-level BPE trained on the fixture corpus with ``split`` as its pre-tokenizer (saved; returned)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=2, special_tokens=[])
    tk.train_from_iterator([corpus()], trainer=trainer)
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tk.token_to_id(bos))])
    kwargs = {"bos_token": bos} if bos else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, clean_up_tokenization_spaces=False,
                                  model_max_length=131072, **kwargs)
    tok.chat_template = template
    tok.save_pretrained(out)
    return tok


def _round(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


# -- Phi-4-mini ---------------------------------------------------------------------------------
def phi3() -> Path:
    def build(out: Path) -> None:
        import torch
        from transformers import Phi3Config, Phi3ForCausalLM

        specials = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
        n = len(_bpe_tokenizer(out, GPT4O_SPLIT, specials, "<|endoftext|>", PHI4_TEMPLATE))
        head_dim, rot = 32, 24  # partial_rotary_factor 0.75 as Phi-4-mini
        g = torch.Generator().manual_seed(7)
        long = (1.0 + 3.0 * torch.rand(rot // 2, generator=g)).tolist()
        short = (1.0 + 0.5 * torch.rand(rot // 2, generator=g)).tolist()
        cfg = Phi3Config(
            vocab_size=_round(n), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=256 // head_dim, num_key_value_heads=2, max_position_embeddings=131072,
            original_max_position_embeddings=4096, partial_rotary_factor=0.75, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": long,
                             "short_factor": short, "partial_rotary_factor": 0.75,
                             "original_max_position_embeddings": 4096},
            sliding_window=262144, tie_word_embeddings=True, bos_token_id=n - 5, eos_token_id=n - 5,
            pad_token_id=n - 5,
        )
        model = _random_model(Phi3ForCausalLM, cfg, 0.1)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "mit", ["en"], "microsoft/Phi-4-mini-instruct", "Tiny-Phi-4-mini")

    return _cached("phi4mini", build, _SOURCE)  # not "phi3": llama.cpp keys token attributes on that name


# -- SmolLM3 --------------------------------------------------------------------------------------
def smollm3() -> Path:
    tok_src = fixtures.fixture_dir("llama3")  # skips the test when ../shared is absent

    def build(out: Path) -> None:
        import torch
        from transformers import SmolLM3Config, SmolLM3ForCausalLM

        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
            if (tok_src / f).is_file():
                shutil.copy(tok_src / f, out / f)
        cfg = SmolLM3Config(
            vocab_size=128256, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=65536, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0}, no_rope_layer_interval=4,
            bos_token_id=128000, eos_token_id=128009, pad_token_id=128004,
        )
        model = _random_model(SmolLM3ForCausalLM, cfg, 0.1)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["en"], "HuggingFaceTB/SmolLM3-3B", "Tiny-SmolLM3")

    return _cached("smollm3", build, _SOURCE, tok_src.name,
                   hashlib.sha256(LLAMA3_TIKTOKEN.read_bytes()).hexdigest())


# -- GLM-4-0414 -----------------------------------------------------------------------------------
def glm4() -> Path:
    def build(out: Path) -> None:
        import torch
        from transformers import Glm4Config, Glm4ForCausalLM

        specials = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                    "<|assistant|>", "<|observation|>"]
        n = len(_bpe_tokenizer(out, LLAMA3_SPLIT, specials, "<|user|>", GLM4_TEMPLATE))
        cfg = Glm4Config(
            vocab_size=_round(n), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, head_dim=32, attention_bias=True, max_position_embeddings=32768,
            rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                "partial_rotary_factor": 0.5},
            tie_word_embeddings=False, eos_token_id=[n - 10, n - 3], pad_token_id=n - 10,
        )
        model = _random_model(Glm4ForCausalLM, cfg, 0.1)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "mit", ["zh", "en"], "zai-org/GLM-4-9B-0414", "Tiny-GLM-4")

    return _cached("glm4", build, _SOURCE)


# -- Ministral 3 -----------------------------------------------------------------------------------
def _ministral3_text_config(tok):
    from transformers import Ministral3Config

    # YaRN and the llama-4 temperature with a short original context, so that within the 256 probe tokens both
    # the interpolated frequencies and several temperature steps (every 64 positions) are exercised
    return Ministral3Config(
        vocab_size=_round(len(tok)), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, rms_norm_eps=1e-5,
        rope_parameters={"type": "yarn", "rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0,
                         "original_max_position_embeddings": 64, "max_position_embeddings": 1024, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.convert_tokens_to_ids("<unk>"),
    )


_MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]


def ministral3() -> Path:
    def build(out: Path) -> None:
        import torch
        from transformers import Ministral3ForCausalLM

        tok = _bpe_tokenizer(out, TEKKEN_SPLIT, _MISTRAL_SPECIALS, "</s>", MISTRAL_TEMPLATE, bos="<s>")
        model = _random_model(Ministral3ForCausalLM, _ministral3_text_config(tok), 0.1)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["en"], "mistralai/Ministral-3-3B-Instruct-2512", "Tiny-Ministral-3")

    return _cached("ministral3", build, _SOURCE)


def mistral3_vl() -> Path:
    def build(out: Path) -> None:
        import torch
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralVisionConfig

        tok = _bpe_tokenizer(out, TEKKEN_SPLIT, _MISTRAL_SPECIALS + ["[IMG]", "[IMG_BREAK]", "[IMG_END]"], "</s>",
                             MISTRAL_TEMPLATE, bos="<s>")
        vision = PixtralVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=64, patch_size=16, head_dim=32)
        cfg = Mistral3Config(text_config=_ministral3_text_config(tok).to_dict(), vision_config=vision.to_dict(),
                             image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2)
        cfg.text_config.architectures = None
        model = _random_model(Mistral3ForConditionalGeneration, cfg, 0.1)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["en"], "mistralai/Ministral-3-8B-Instruct-2512", "Tiny-Ministral-3-VL")

    return _cached("mistral3_vl", build, _SOURCE)


ALL = {"phi3": phi3, "smollm3": smollm3, "glm4": glm4, "ministral3": ministral3, "mistral3_vl": mistral3_vl}
#: the ``convert --lora`` targets of each family (attention and MLP, fused where the family fuses)
LORA_TARGETS = {
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "smollm3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "glm4": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "ministral3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # the language model's modules only: peft would otherwise adapt the vision tower's too
    "mistral3_vl": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
}


def family_dir(name: str) -> Path:
    return ALL[name]()


def lora_adapter(name: str) -> Path:
    """A peft LoRA (random, non-zero factors) on the family's attention and MLP modules, cached."""
    base = family_dir(name)

    def build(out: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        import adapters

        model = load_hf(base)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS[name], init_lora_weights=False,
                         base_model_name_or_path=base.name)
        pm = get_peft_model(model, cfg)
        adapters._perturb(pm, seed=sum(map(ord, name)))
        del torch
        pm.save_pretrained(out)

    return _cached(f"lora-{name}", build, _SOURCE, base.name)


def load_hf(model_dir: Path):
    """The float32 Hugging Face model of a fixture (the multimodal one through its own class)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg["architectures"][0].endswith("ForConditionalGeneration"):
        import transformers

        cls = getattr(transformers, cfg["architectures"][0])
        model = cls.from_pretrained(model_dir, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model


# -- Gemma 4 (dense) ----------------------------------------------------------------------------------
def gemma4() -> Path:
    """E2B-like: per-layer embeddings, the last two layers sharing K/V (one sliding, one global) with double-wide
    MLPs, global layers with their own head size, K=V and fewer KV heads (31B-like), proportional rope."""
    tok_src = fixtures.gemma3()  # Gemma's SentencePiece tokenizer (262144 tokens)

    def build(out: Path) -> None:
        from transformers import Gemma4ForCausalLM, Gemma4TextConfig

        for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja"):
            if (tok_src / f).is_file():
                shutil.copy(tok_src / f, out / f)
        types = ["sliding_attention", "full_attention"] * 3
        cfg = Gemma4TextConfig(
            vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size=64, intermediate_size=128,
            num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
            num_global_key_value_heads=1, attention_k_eq_v=True, hidden_size_per_layer_input=8,
            num_kv_shared_layers=2, use_double_wide_mlp=True, layer_types=types, sliding_window=64,
            final_logit_softcapping=30.0, max_position_embeddings=131072, tie_word_embeddings=True,
            bos_token_id=2, eos_token_id=1, pad_token_id=0,
        )
        _save_gemma4(_random_model(Gemma4ForCausalLM, cfg, 0.35), out)
        _write_card(out, "gemma", ["en"], "google/gemma-4-E2B-it", "Tiny-Gemma-4")

    return _cached("gemma4", build, _SOURCE, tok_src.name)


def _copy_tokenizer(src: Path, out: Path) -> None:
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja"):
        if (src / f).is_file():
            shutil.copy(src / f, out / f)


def _save_gemma4(model, out: Path) -> None:
    """Save with ``layer_scalar`` (a buffer _random_model leaves at 1) set to 0.6..1.4, so that it is tested too."""
    import torch

    g = torch.Generator().manual_seed(5)  # a seed whose probe logits have no near tie (min top-2 gap 0.014)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.layer_scalar.copy_(0.6 + 0.8 * torch.rand(1, generator=g))
    _save_model(model, out, torch.bfloat16)


def gemma4_moe() -> Path:
    """26B-A4B-like: every layer a dense MLP plus 4 routed experts (top 2), no per-layer embeddings, K=V globals."""
    tok_src = fixtures.gemma3()

    def build(out: Path) -> None:
        from transformers import Gemma4ForCausalLM, Gemma4TextConfig

        _copy_tokenizer(tok_src, out)
        cfg = Gemma4TextConfig(
            vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size=64, intermediate_size=96,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
            num_global_key_value_heads=1, attention_k_eq_v=True, hidden_size_per_layer_input=0,
            layer_types=["sliding_attention", "full_attention"], sliding_window=64, final_logit_softcapping=30.0,
            enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
            max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        )
        _save_gemma4(_random_model(Gemma4ForCausalLM, cfg, 0.35), out)
        _write_card(out, "gemma", ["en"], "google/gemma-4-26B-A4B-it", "Tiny-Gemma-4-MoE")

    return _cached("gemma4_moe", build, _SOURCE, tok_src.name)


ALL["gemma4"] = gemma4
ALL["gemma4_moe"] = gemma4_moe
LORA_TARGETS["gemma4"] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# attention and the dense MLP (LoRA on the fused 3-D experts is peft's target_parameters: see issue11-moe)
LORA_TARGETS["gemma4_moe"] = LORA_TARGETS["gemma4"]
