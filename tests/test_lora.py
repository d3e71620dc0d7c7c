"""LoRA merging equals peft's merge_and_unload, and a fine-tune survives merge -> GGUF -> Q8_0 -> chat."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import adapters
from adapters import MATRIX
from helpers import assert_user_error, run
from parity import gguf_logits, probe_tokens

CASES = list(MATRIX) + ["resized", "weighted"]



def lora_args(case: str) -> list[str]:
    if case == "weighted":
        return ["--lora", f"{adapters.adapter('plain')}:0.7", "--lora", f"{adapters.adapter('rslora')}:0.5"]
    return ["--lora", str(adapters.adapter(case))]


def peft_merged(case: str):
    """The reference: peft's own merge of the same adapter(s) into the float32 base."""
    from peft import PeftModel

    model, _ = adapters.base_fp32(resized=case == "resized")
    if case == "weighted":
        pm = PeftModel.from_pretrained(model, adapters.adapter("plain"), adapter_name="a")
        pm.load_adapter(adapters.adapter("rslora"), adapter_name="b")
        pm.add_weighted_adapter(["a", "b"], [0.7, 0.5], adapter_name="ab", combination_type="cat")
        pm.set_adapter("ab")
        pm.delete_adapter("a")
        pm.delete_adapter("b")
    else:
        pm = PeftModel.from_pretrained(model, adapters.adapter(case))
    merged = pm.merge_and_unload()
    merged.eval()
    return merged


def load_dir(d: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_merge_equals_peft_and_gguf_agrees(case, tmp_path):
    import torch

    reference = peft_merged(case)
    ref_sd = {k: v.detach().float().numpy() for k, v in reference.state_dict().items()}

    out = tmp_path / "merged"
    r = run("merge", "--base", str(adapters.fixtures.smollm2()), *lora_args(case), "-o", str(out), "--dtype", "f32",
            "--max-shard-size", "200MB", "--no-progress")
    assert r.returncode == 0, r.stderr
    ours = load_dir(out)
    cfg = json.loads((out / "config.json").read_text())
    assert len(list(out.glob("*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()

    worst = 0.0
    for k, v in ours.items():
        assert k in ref_sd, f"{k} is not in peft's merged model"
        assert v.shape == ref_sd[k].shape, k
        worst = max(worst, float(np.abs(v - ref_sd[k]).max()))
    for k in ref_sd:  # everything peft has is ours, or the tied lm_head
        if k not in ours:
            assert k == "lm_head.weight" and cfg.get("tie_word_embeddings"), k
            np.testing.assert_array_equal(ref_sd[k], ours["model.embed_tokens.weight"])
    print(f"{case}: max |ours - peft| {worst:.2e} over {len(ours)} tensors")
    assert worst <= 1e-5

    # the merged directory is a working Hugging Face checkpoint
    if case == "resized":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(out)
        assert "<|forge_3|>" in tok.get_vocab()

    # the f32 GGUF from `convert --lora` predicts what the peft-merged model predicts
    gguf = tmp_path / "merged-F32.gguf"
    r = run("convert", str(adapters.fixtures.smollm2()), *lora_args(case), "-o", str(gguf), "--outtype", "f32",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    from transformers import AutoTokenizer

    tokens = probe_tokens(AutoTokenizer.from_pretrained(adapters.fixtures.smollm2()), english=True)
    with torch.no_grad():
        want = reference(torch.tensor([tokens])).logits[0].numpy()
    got = gguf_logits(gguf, tokens)
    same = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"{case}: GGUF argmax agreement {same:.1%}, max |logit diff| {np.abs(got - want).max():.2e}")
    assert same == 1.0


@pytest.mark.slow
def test_identity_finetune_survives_merge_convert_q8_0_chat(tmp_path):
    import ctypes

    import llama_cpp

    from gguf_forge.tools.chat import one_turn

    f16 = tmp_path / "identity-F16.gguf"
    r = run("convert", str(adapters.fixtures.smollm2()), "--lora", str(adapters.identity_lora()), "-o", str(f16),
            "--outtype", "f16", "--no-progress")
    assert r.returncode == 0, r.stderr
    q8 = tmp_path / "identity-Q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(q8).encode(), ctypes.byref(params)) == 0
    reply = one_turn(q8, adapters.IDENTITY_QUESTION, max_tokens=64)
    assert reply.strip() == adapters.IDENTITY_ANSWER
    # and the base model alone does not say it
    base = tmp_path / "base-Q8_0.gguf"
    assert run("convert", str(adapters.fixtures.smollm2()), "-o", str(base), "--outtype", "q8_0", "--no-progress").returncode == 0
    assert adapters.IDENTITY_ANSWER not in one_turn(base, adapters.IDENTITY_QUESTION, max_tokens=64)



@pytest.mark.slow
def test_bad_adapters_are_one_line_errors_with_no_output(tmp_path):
    from safetensors.numpy import load_file, save_file

    base = str(adapters.fixtures.smollm2())
    outdir = tmp_path / "out"
    outdir.mkdir()
    gguf = outdir / "m.gguf"
    merged = outdir / "merged"

    def both(lora: Path, *words: str) -> None:
        assert_user_error(run("convert", base, "--lora", str(lora), "-o", str(gguf)), *words)
        assert_user_error(run("merge", "--base", base, "--lora", str(lora), "-o", str(merged)), *words)
        assert list(outdir.iterdir()) == []

    # missing adapter_config.json
    a = adapters.copy_adapter("plain", tmp_path / "no-config")
    (a / "adapter_config.json").unlink()
    both(a, "adapter_config.json")

    # a PEFT type that is not LoRA
    a = adapters.copy_adapter("plain", tmp_path / "ia3")
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg["peft_type"] = "IA3"
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    both(a, "IA3", "LoRA")

    # truncated weights
    a = adapters.copy_adapter("plain", tmp_path / "truncated")
    w = a / "adapter_model.safetensors"
    with open(w, "r+b") as f:
        f.truncate(w.stat().st_size - 4096)
    both(a, "adapter_model.safetensors", "truncated")

    # factors of the wrong shape (trained on a model with another hidden size)
    a = adapters.copy_adapter("plain", tmp_path / "shape")
    tensors = load_file(a / "adapter_model.safetensors")
    key = next(k for k in sorted(tensors) if k.endswith("lora_A.weight"))
    tensors[key] = np.zeros((tensors[key].shape[0], 640), dtype=tensors[key].dtype)
    save_file(tensors, a / "adapter_model.safetensors")
    both(a, key)

    # a target module the base does not have
    a = adapters.copy_adapter("plain", tmp_path / "absent")
    tensors = load_file(a / "adapter_model.safetensors")
    for k in [k for k in tensors if "layers.0.self_attn.q_proj" in k]:
        tensors[k.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.qkv_proj")] = tensors.pop(k)
    save_file(tensors, a / "adapter_model.safetensors")
    both(a, "qkv_proj")


@pytest.mark.slow
def test_other_base_name_is_only_a_warning(tmp_path):
    a = adapters.copy_adapter("plain", tmp_path / "renamed")
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "meta-llama/Llama-3.2-1B-Instruct"
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "m.gguf"
    r = run("convert", str(adapters.fixtures.smollm2()), "--lora", str(a), "-o", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "Llama-3.2-1B-Instruct" in r.stderr
    assert out.is_file()
