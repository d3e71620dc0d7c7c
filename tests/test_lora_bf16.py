"""`convert --lora --outtype bf16` on a bf16 base merges in place in bf16 slabs: with a bf16 adapter by bf16 matmuls
(float32 accumulation), equal to the float32 merge rounded to bf16 but for a rare value one bf16 ulp off; with a
float32 adapter (peft's default) by the float32 merge rounded once by torch, bit for bit the float32 merge's bf16."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gguf_forge.convert import convert, merged_source, parse_lora_spec
from gguf_forge.convert.checkpoint import Checkpoint

import adapters
import fixtures


def _bf16_adapter(base: Path, out: Path, dtype: str = "bf16") -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return adapters.random_peft_adapter(
        model, out, seed=0, scale=0.3, factor_dtype=torch.bfloat16 if dtype == "bf16" else None, r=8, lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


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


def test_small_slabs_and_reused_buffers_write_the_same_bytes(tmp_path, monkeypatch):
    """Streaming in many small slabs, each through reused buffers (the reader's, kept from tensor to tensor; the
    merge's; the copies handed to the writer thread, reused once written) and the one merge thread kept for every
    tensor, changes nothing: the same bytes as large slabs without a LoRA, and with a float32 adapter still bit for
    bit the float32 merge rounded to bf16."""
    import torch

    from gguf_forge.convert import converter

    base = fixtures.qwen3()  # bf16 weights; 2 KiB slabs: 10 to 190 slabs per tensor
    adapter = _bf16_adapter(base, tmp_path / "lora", dtype="f32")
    specs = [parse_lora_spec(str(adapter))]
    convert(base, tmp_path / "plain-large.gguf", outtype="bf16", progress=False)
    monkeypatch.setattr(converter, "SLAB_BYTES", 2048)
    for _ in range(2):  # the second conversion starts with the pools' buffers of the first
        convert(base, tmp_path / "plain-small.gguf", outtype="bf16", progress=False)
        assert (tmp_path / "plain-small.gguf").read_bytes() == (tmp_path / "plain-large.gguf").read_bytes()
    convert(base, tmp_path / "m-bf16.gguf", outtype="bf16", loras=specs, progress=False)
    convert(base, tmp_path / "m-f32.gguf", outtype="f32", loras=specs, progress=False)
    fast, exact, plain = (_tensors(tmp_path / f) for f in ("m-bf16.gguf", "m-f32.gguf", "plain-small.gguf"))
    changed = 0
    for name, bits in fast.items():
        if bits.dtype != np.uint16:
            continue
        want = torch.from_numpy(exact[name].astype(np.float32).reshape(bits.shape)).to(torch.bfloat16)
        np.testing.assert_array_equal(bits.view(np.int16), want.view(torch.int16).numpy(), err_msg=name)
        changed += int(not np.array_equal(bits, plain[name]))
    assert changed == 2 * 7  # the merge happened, in every targeted matrix
