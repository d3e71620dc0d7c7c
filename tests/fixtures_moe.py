"""Tiny MoE checkpoints (Qwen3-MoE, gpt-oss), built with transformers' own classes from shrunk copies of the real
configurations (Qwen3-30B-A3B, gpt-oss-20b), seeded random weights, cached like every fixture (fixtures._cached).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import fixtures
from fixtures import _cached, _qwen_tokenizer, _random_model, _save_model, _write_card

_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def qwen3_moe() -> Path:
    """Qwen3-30B-A3B shrunk: 4 layers (every one MoE, as in the real model), 8 experts (2 used per token),
    renormalised top-k, head_dim 32 != hidden/heads, bf16 weights as released, the Qwen-style trained tokenizer;
    saved by transformers 5's ``save_pretrained``, i.e. per-expert 2-D tensors like the hub checkpoint."""

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        n = _qwen_tokenizer(out)
        cfg = Qwen3MoeConfig(
            vocab_size=n, hidden_size=64, intermediate_size=192, moe_intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1000000.0,
            rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=False, eos_token_id=n - 1,
        )
        model = _random_model(Qwen3MoeForCausalLM, cfg, 0.35)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["en"], "Qwen/Qwen3-30B-A3B", "Tiny-Qwen3-MoE")

    return _cached("qwen3_moe", build, _SOURCE)


def qwen3_moe_k() -> Path:
    """:func:`qwen3_moe` 256 wide (hidden, 4 heads x 64, expert width 256): every expert and attention row is a
    whole number of K-quant blocks, so a Q4_K_M really holds Q4_K/Q6_K there instead of llama.cpp's fallback types
    for narrow rows (what the imatrix tests need). Its norm weights are log-normal (some channels several times
    larger than others, as in trained models), so the activations' per-column magnitudes differ and an importance
    matrix has something to tell the quantizer."""

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        n = _qwen_tokenizer(out)
        cfg = Qwen3MoeConfig(
            vocab_size=n, hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1000000.0,
            rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=False, eos_token_id=n - 1,
        )
        model = _random_model(Qwen3MoeForCausalLM, cfg, 0.06)
        outlier_norms(model)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["en"], "Qwen/Qwen3-30B-A3B", "Tiny-Qwen3-MoE-K")

    return _cached("qwen3_moe_k", build, _SOURCE)


def qwen35_moe_k() -> Path:
    """Qwen3.5-MoE 256 wide (fixtures_qwen35's wide MoE shape: Gated DeltaNet and gated attention layers, experts
    and shared expert 256 wide) with :func:`qwen3_moe_k`'s log-normal norm weights, for the imatrix tests."""
    import fixtures_qwen35

    tok_src = fixtures_qwen35.qwen35()

    def build(out: Path) -> None:
        import json

        import torch
        from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tok_src / f).is_file():
                (out / f).write_bytes((tok_src / f).read_bytes())
        n = json.loads((tok_src / "config.json").read_text())["vocab_size"]
        kw = dict(fixtures_qwen35.TEXT, hidden_size=256, num_hidden_layers=4, head_dim=64, linear_key_head_dim=64,
                  linear_value_head_dim=64)
        kw.pop("intermediate_size")
        kw.update(fixtures_qwen35.MOE, moe_intermediate_size=256, shared_expert_intermediate_size=256)
        cfg = Qwen3_5MoeTextConfig(vocab_size=n, eos_token_id=n - 1, tie_word_embeddings=False, **kw)
        model = _random_model(Qwen3_5MoeForCausalLM, cfg, 0.04)
        outlier_norms(model, one_centered=False)  # Qwen3.5's RMSNorm scales by (1 + weight)
        _save_model(model, out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["zh", "en"], "Qwen/Qwen3.5-35B-A3B", "Tiny-Qwen3.5-MoE-K")

    return _cached("qwen35_moe_k", build, _SOURCE, tok_src.name)


def outlier_norms(model, sigma: float = 1.6, seed: int = 4321, one_centered: bool = True) -> None:
    """Every decoder-layer RMSNorm (``*layernorm``) scaling its channels log-normally (exp(sigma x N(0, 1))):
    uneven channel magnitudes like a trained model's, which the importance matrix measures. ``one_centered``:
    the norm multiplies by its weight (else by 1 + weight, as Qwen3.5's)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "layernorm" in name:
                scale = torch.exp(sigma * torch.randn(p.shape, generator=g))
                p.copy_(scale if one_centered else scale - 1)


# -- gpt-oss -----------------------------------------------------------------------------------------------------
#: o200k's split (what gpt-oss's tokenizer.json applies before byte-level BPE; llama.cpp's "gpt-4o")
O200K_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
HARMONY_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>",
                    "<|end|>", "<|message|>", "<|call|>")
#: a reduced harmony template (roles and the final channel; gpt-oss's full template adds the system preamble)
HARMONY_TEMPLATE = (
    "{% for message in messages %}<|start|>{{ message['role'] }}{% if message['role'] == 'assistant' %}"
    "<|channel|>final{% endif %}<|message|>{{ message['content'] }}{% if message['role'] == 'assistant' %}"
    "<|return|>{% else %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant<|channel|>final<|message|>{% endif %}"
)


def _harmony_tokenizer(out: Path) -> int:
    """A byte-level BPE trained here with o200k_harmony's pre-tokenizer and special tokens (the real 201k-token
    vocabulary is a download from OpenAI's blob store that no registry package ships; see the closing note)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=2)
    tk.train_from_iterator([fixtures.corpus()], trainer=trainer)
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in HARMONY_SPECIALS])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|startoftext|>", eos_token="<|return|>",
                                  pad_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                                  model_max_length=131072)
    tok.chat_template = HARMONY_TEMPLATE
    tok.save_pretrained(out)
    return len(tok)


def _gpt_oss_model(n_vocab: int):
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(
        vocab_size=n_vocab, hidden_size=64, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, num_local_experts=8, num_experts_per_tok=2, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"] * 2, rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "original_max_position_embeddings": 4096, "truncate": True},
        tie_word_embeddings=False, eos_token_id=n_vocab - 1, swiglu_limit=7.0,
    )
    return _random_model(GptOssForCausalLM, cfg, 0.35)


def gpt_oss() -> Path:
    """gpt-oss-20b shrunk: 4 layers alternating sliding (window 16, so it matters within the 256 probe tokens) and
    full attention, 8 experts (2 used), attention sinks, yarn rope as released, head_dim 32 != hidden/heads; bf16
    weights with the experts fused as transformers 5 saves them (``gate_up_proj`` ``[E, hidden, 2 x ff]``)."""

    def build(out: Path) -> None:
        import torch

        n = _harmony_tokenizer(out)
        _save_model(_gpt_oss_model(n), out, torch.bfloat16)
        _write_card(out, "apache-2.0", ["en"], "openai/gpt-oss-20b", "Tiny-gpt-oss")

    return _cached("gpt_oss", build, _SOURCE)


_FP4 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def mxfp4_quantize(w):
    """float32 ``[..., n]`` (n a multiple of 32) -> (blocks ``[..., n / 32, 16]``, scales ``[..., n / 32]``) in
    OpenAI's MXFP4 layout (OCP MX spec): per 32 values one E8M0 scale 2^(floor(log2(amax)) - 2), each value the
    nearest FP4 E2M1 code (sign bit 3) of value / scale; element 2j in the low nibble of byte j, 2j + 1 high."""
    import numpy as np

    w = np.asarray(w, dtype=np.float32)
    g = w.reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    amax = np.abs(g).max(axis=-1)
    exp = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-30))) - 2, -127).clip(-127, 127)
    scaled = g / np.exp2(exp)[..., None]
    grid = np.asarray(_FP4, dtype=np.float32)
    mag = np.abs(np.clip(scaled, -6.0, 6.0))
    code = np.abs(mag[..., None] - grid).argmin(axis=-1).astype(np.uint8) | (np.signbit(scaled) << 3).astype(np.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (exp + 127).astype(np.uint8)


def gpt_oss_mxfp4() -> Path:
    """The gpt_oss() fixture's weights with the experts stored as gpt-oss-20b ships them: MXFP4 ``*_blocks`` /
    ``*_scales`` (quantized here from the bf16 weights), biases and everything else bf16, quantization_config
    ``mxfp4``."""

    def build(out: Path) -> None:
        import json

        import numpy as np
        import torch
        from safetensors.torch import load_file, save_file

        src = gpt_oss()
        for f in src.iterdir():
            if f.is_file() and f.name != "model.safetensors" and not f.name.startswith("."):
                (out / f.name).write_bytes(f.read_bytes())
        sd = load_file(src / "model.safetensors")
        new = {}
        for k, v in sd.items():
            if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
                blocks, scales = mxfp4_quantize(v.float().transpose(1, 2).numpy())  # [E, out, in] rows
                new[k + "_blocks"] = torch.from_numpy(np.ascontiguousarray(blocks))
                new[k + "_scales"] = torch.from_numpy(np.ascontiguousarray(scales))
            else:
                new[k] = v
        save_file(new, out / "model.safetensors", metadata={"format": "pt"})
        cfg = json.loads((src / "config.json").read_text())
        cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
        (out / "config.json").write_text(json.dumps(cfg, indent=2))

    return _cached("gpt_oss_mxfp4", build, _SOURCE)


ALL = {"qwen3_moe": qwen3_moe, "gpt_oss": gpt_oss, "gpt_oss_mxfp4": gpt_oss_mxfp4}


# -- LoRA adapters on experts -------------------------------------------------------------------------------------
def _perturb_lora(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def base(name: str) -> Path:
    """The base checkpoint of an expert-LoRA case: a fixture of :data:`ALL`, or Gemma 4's MoE (fixtures_dense)."""
    if name == "gemma4_moe":
        import fixtures_dense

        return fixtures_dense.gemma4_moe()
    return ALL[name]()


#: peft targets of the "params" layouts: (target_modules, target_parameters)
_PARAM_TARGETS = {
    "params": (["q_proj", "v_proj", "o_proj"], ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]),
    # Gemma 4 keeps its experts beside the dense MLP (``layers.N.experts``, no ``mlp.``): both 3-D parameters
    # (nested ParamWrappers), or one of them plus the router's Linear
    "gemma4_moe/params": (["q_proj", "v_proj", "o_proj"], ["experts.gate_up_proj", "experts.down_proj"]),
    "gemma4_moe/params-router": (["q_proj", "router.proj"], ["experts.down_proj"]),
}


def moe_lora(name: str, layout: str) -> Path:
    """A LoRA adapter on fixture ``name``'s attention and experts, in one of the two layouts peft produces with
    transformers 5:

    - "params": ``target_parameters`` on the fused 3-D expert parameters (``mlp.experts.gate_up_proj`` and
      ``mlp.experts.down_proj``), made with peft's ``get_peft_model`` (what training with transformers 5 saves);
    - "experts": per-expert Linear modules (``mlp.experts.{e}.gate_proj`` ...), the layout of every adapter trained
      with transformers 4 (Qwen3-MoE's experts were Linear modules then); peft converts it when it loads it onto a
      transformers 5 model. Written here in that layout with seeded random factors.
    """

    def build(out: Path) -> None:
        import json

        import torch

        base_dir = base(name)
        if layout.startswith("params"):
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            modules, params = _PARAM_TARGETS.get(f"{name}/{layout}") or _PARAM_TARGETS[layout]
            cfg = LoraConfig(r=4, lora_alpha=8, target_modules=modules, target_parameters=params,
                             init_lora_weights=False, base_model_name_or_path=base_dir.name)
            pm = get_peft_model(model, cfg)
            _perturb_lora(pm, seed=7)
            pm.save_pretrained(out)
            return
        from safetensors.torch import save_file

        c = json.loads((base_dir / "config.json").read_text())
        h, f, r = c["hidden_size"], c["moe_intermediate_size"], 4
        q = c["num_attention_heads"] * c["head_dim"]
        g = torch.Generator().manual_seed(11)
        sd = {}

        def add(module: str, n_in: int, n_out: int) -> None:
            sd[f"base_model.model.{module}.lora_A.weight"] = 0.1 * torch.randn(r, n_in, generator=g)
            sd[f"base_model.model.{module}.lora_B.weight"] = 0.1 * torch.randn(n_out, r, generator=g)

        for b in range(c["num_hidden_layers"]):
            add(f"model.layers.{b}.self_attn.q_proj", h, q)
            for e in range(c.get("num_experts") or c["num_local_experts"]):
                p = f"model.layers.{b}.mlp.experts.{e}"
                add(f"{p}.gate_proj", h, f)
                add(f"{p}.up_proj", h, f)
                add(f"{p}.down_proj", f, h)
        save_file(sd, out / "adapter_model.safetensors", metadata={"format": "pt"})
        (out / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 8, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "gate_proj", "up_proj", "down_proj"], "bias": "none",
            "base_model_name_or_path": base_dir.name, "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        }, indent=2))

    return _cached(f"lora-{name}-{layout}", build, base(name).name, _SOURCE)
