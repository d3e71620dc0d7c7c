"""`convert --lora --outtype bf16` on a bf16 base merges in place in bf16 slabs: with a bf16 adapter by bf16 matmuls
(float32 accumulation), equal to the float32 merge rounded to bf16 but for a rare value one bf16 ulp off; with a
float32 adapter (peft's default) by the float32 merge rounded once by torch, bit for bit the float32 merge's bf16."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gguf_forge.convert import convert, merged_source, parse_lora_spec
from gguf_forge.convert.checkpoint import Checkpoint

import fixtures


def _bf16_adapter(base: Path, out: Path, dtype: str = "bf16") -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(out)
    f = out / "adapter_model.safetensors"
    if dtype == "bf16":
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(f).items()}, f)
    return out


def _tensors(path: Path) -> dict[str, np.ndarray]:
    import gguf

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        data = np.array(t.data)
        out[t.name] = data.view(np.uint16) if t.tensor_type == gguf.GGMLQuantizationType.BF16 else data
    return out


def test_bf16_merge_equals_the_float32_merge_rounded(tmp_path):
    import torch

    base = fixtures.qwen3()  # bf16 weights
    adapter = _bf16_adapter(base, tmp_path / "lora")
    specs = [parse_lora_spec(str(adapter))]
    merged = merged_source(Checkpoint(base), specs)
    merged.write_bf16()
    assert len(merged._bf16) == 2 * 7  # every targeted matrix of both layers takes the bf16 path
    convert(base, tmp_path / "m-bf16.gguf", outtype="bf16", loras=specs, progress=False)
    convert(base, tmp_path / "m-f32.gguf", outtype="f32", loras=specs, progress=False)
    convert(base, tmp_path / "b-bf16.gguf", outtype="bf16", progress=False)
    fast, exact, plain = (_tensors(tmp_path / f) for f in ("m-bf16.gguf", "m-f32.gguf", "b-bf16.gguf"))
    changed = off = total = 0
    for name, bits in fast.items():
        if bits.dtype != np.uint16:
            continue
        want = torch.from_numpy(exact[name].astype(np.float32).reshape(bits.shape)).to(torch.bfloat16)
        want = want.view(torch.int16).numpy()
        got = bits.view(np.int16)
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
        assert diff.max() <= 1, name  # at most one ulp (same sign and exponent range: adjacent bit patterns)
        off += int((diff > 0).sum())
        total += diff.size
        changed += int(not np.array_equal(bits, plain[name]))
    assert changed == 2 * 7  # the merge happened
    assert off <= total * 1e-4, (off, total)


def test_f32_adapter_bf16_output_is_the_float32_merge_bit_for_bit(tmp_path):
    import torch

    base = fixtures.qwen3()  # bf16 weights
    adapter = _bf16_adapter(base, tmp_path / "lora", dtype="f32")
    specs = [parse_lora_spec(str(adapter)), parse_lora_spec(f"{adapter}:0.5")]  # two adapters, one weighted
    merged = merged_source(Checkpoint(base), specs)
    merged.write_bf16()
    assert len(merged._bf16) == 2 * 7  # float32 factors take the in-place bf16 output path too
    convert(base, tmp_path / "m-bf16.gguf", outtype="bf16", loras=specs, progress=False)
    convert(base, tmp_path / "m-f32.gguf", outtype="f32", loras=specs, progress=False)
    convert(base, tmp_path / "b-bf16.gguf", outtype="bf16", progress=False)
    fast, exact, plain = (_tensors(tmp_path / f) for f in ("m-bf16.gguf", "m-f32.gguf", "b-bf16.gguf"))
    changed = 0
    for name, bits in fast.items():
        if bits.dtype != np.uint16:
            continue
        want = torch.from_numpy(exact[name].astype(np.float32).reshape(bits.shape)).to(torch.bfloat16)
        np.testing.assert_array_equal(bits.view(np.int16), want.view(torch.int16).numpy(), err_msg=name)
        changed += int(not np.array_equal(bits, plain[name]))
    assert changed == 2 * 7  # the merge happened
