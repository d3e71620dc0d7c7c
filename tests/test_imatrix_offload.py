"""The torch imatrix engine placed by accelerate (`--device-map`, `--max-memory`, `--offload-folder`), tested on the
CPU with disk offload (no GPU here): the same statistic as the model held whole in memory and as the llama engine,
the offload really happened (the device map holds "disk", converted MoE experts were re-saved in the offload folder),
the offloaded run's peak memory is lower; adapters merged; the options' errors. Also: the torch engine applies
Architecture.imatrix_columns (Qwen3.5's ssm_out value-head reorder), so both engines agree on Qwen3.5."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import fixtures_moe
import fixtures_qwen35
from gguf_forge.convert import Checkpoint, arch_for_config, parse_lora_spec
from gguf_forge.quant import compute_imatrix, read_imatrix

import adapters
import fixtures
from helpers import assert_user_error, run
from imatrix_check import differences

CTX, CHUNKS = 64, 4
#: everything offloaded to the disk: each module's weights are read in for its forward and dropped after
ALL_ON_DISK = "cpu=100KB"


def _disk_offloaded(stats: dict) -> None:
    assert stats["engine"] == "torch" and stats["offloaded"] is True, stats
    assert "disk" in stats["device_map"].values(), stats["device_map"]


@pytest.mark.parametrize("family", ["qwen2", "qwen3_moe"])
def test_disk_offload_equals_the_whole_model_and_the_llama_engine(family, tmp_path):
    """Dense and MoE (transformers' fused experts, converted at load so re-saved in the offload folder): with every
    module on the disk the statistic is the one of the model held in memory (same float32 computation) and agrees
    with llama.cpp's (the llama engine on an F32 GGUF)."""
    model = fixtures.qwen2() if family == "qwen2" else fixtures_moe.qwen3_moe()
    plain, stats = compute_imatrix(model, ctx=CTX, chunks=CHUNKS, engine="torch", progress=False)
    assert "device_map" not in stats and stats["dtype"] == "float32"
    offload = tmp_path / "offload"
    lines: list[str] = []
    placed, stats = compute_imatrix(model, ctx=CTX, chunks=CHUNKS, max_memory=ALL_ON_DISK, offload_folder=offload,
                                    progress=False, work_dir=tmp_path, log=lines.append)
    _disk_offloaded(stats)
    assert stats["placement"] == "auto" and stats["max_memory"] == {"cpu": 100_000}
    assert any("placement" in line and "disk" in line for line in lines), lines
    if family == "qwen3_moe":
        # the experts are fused at load (per-expert tensors -> gate_up_proj/down_proj): accelerate re-saved them
        assert "model.layers.0.mlp.experts.gate_up_proj.safetensors" in stats["offload_files"], stats["offload_files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offload"] and list(offload.iterdir()) == []  # cleaned
    diffs = differences(placed, plain)
    assert max(diffs.values()) < 1e-6, diffs
    assert {n: c.tolist() for n, c in placed.counts.items()} == {n: c.tolist() for n, c in plain.counts.items()}
    llama, stats = compute_imatrix(model, ctx=CTX, chunks=CHUNKS, engine="llama", gguf_type="f32", progress=False,
                                   work_dir=tmp_path / "llama")
    assert max(differences(llama, placed, max_flips=4).values()) < 2e-3


@pytest.mark.parametrize("family", ["qwen35", "qwen35_moe"])
def test_qwen35_torch_engine_reorders_ssm_out_like_the_llama_engine(family, tmp_path):
    """Qwen3.5's Gated DeltaNet output projection takes value heads grouped by key head; llama.cpp's ssm_out tiles
    them, so its imatrix columns are in another order. The torch engine (whole and offloaded) now gives them in
    llama.cpp's order: both engines agree, and without the reorder they would not."""
    model = getattr(fixtures_qwen35, family)()
    plain, _ = compute_imatrix(model, ctx=CTX, chunks=CHUNKS, engine="torch", progress=False)
    llama, _ = compute_imatrix(model, ctx=CTX, chunks=CHUNKS, engine="llama", gguf_type="f32", progress=False,
                               work_dir=tmp_path)
    diffs = differences(llama, plain, max_flips=4)
    ssm_out = [n for n in diffs if n.endswith("ssm_out.weight")]
    assert len(ssm_out) == 6, ssm_out  # the 6 linear-attention layers of 8
    assert max(diffs.values()) < 2e-3, diffs
    # the reorder is not the identity on these columns: the comparison above could fail
    arch = arch_for_config(json.loads((model / "config.json").read_text()))
    name = ssm_out[0]
    grouped = arch.imatrix_columns(name, plain.sums[name])  # applying it twice = undoing it here (2 heads per group)
    assert not np.allclose(grouped, plain.sums[name], rtol=1e-2)
    assert max(differences(llama, _with(plain, name, grouped), max_flips=4).values()) > 1e-2
    placed, stats = compute_imatrix(model, ctx=CTX, chunks=2, max_memory=ALL_ON_DISK, progress=False,
                                    work_dir=tmp_path)
    _disk_offloaded(stats)
    whole, _ = compute_imatrix(model, ctx=CTX, chunks=2, engine="torch", progress=False)
    assert max(differences(placed, whole).values()) < 1e-6


def _with(im, name, sums):
    from gguf_forge.quant import IMatrix

    out = IMatrix(datasets=im.datasets, chunk_count=im.chunk_count, chunk_size=im.chunk_size)
    out.sums, out.counts = {**im.sums, name: sums}, dict(im.counts)
    return out


def test_lora_with_offload_equals_the_in_memory_merge(tmp_path):
    """Offloaded parameters are not in memory to merge into: the adapters are merged into a temporary float32
    checkpoint (streaming, as `quantize merge` writes it) that accelerate places; same statistic as merging into the
    model held in memory; the temporary checkpoint is removed."""
    specs = [parse_lora_spec(str(adapters.adapter("plain")))]
    model = fixtures.smollm2()
    plain, _ = compute_imatrix(model, ctx=CTX, chunks=2, engine="torch", loras=specs, progress=False)
    lines: list[str] = []
    placed, stats = compute_imatrix(model, ctx=CTX, chunks=2, max_memory="cpu=200MB", loras=specs, progress=False,
                                    work_dir=tmp_path, log=lines.append)
    _disk_offloaded(stats)
    assert "cpu" in stats["device_map"].values()  # part in memory, part on the disk
    assert any("merging the adapters" in line for line in lines), lines
    assert list(tmp_path.iterdir()) == []
    assert max(differences(placed, plain).values()) < 1e-5
    base, _ = compute_imatrix(model, ctx=CTX, chunks=2, engine="torch", progress=False)
    assert max(differences(base, plain).values()) > 1e-4  # the adapter changes the statistic: it was merged


#: runs `quantize ARGS...` (python -m gguf_forge.tools.cli) and, at exit, writes the process's own peak resident
#: memory (VmHWM: the kernel's high-water mark of this process's memory since exec, not a sample) to a file. Not
#: wait4's ru_maxrss: Linux counts in it the parent's memory at fork/exec time, so it reads the test runner's size.
_WITH_PEAK = """
import atexit, runpy, sys
def peak(path=sys.argv[1]):
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(path, "w").write(line.split()[1])
atexit.register(peak)
sys.argv = ["quantize", *sys.argv[2:]]
runpy.run_module("gguf_forge.tools.cli", run_name="__main__")
"""


def _peak_rss(args: list[str], folder) -> tuple[int, subprocess.CompletedProcess]:
    """(peak resident memory in bytes, the finished process) of one `quantize` run in a fresh interpreter."""
    report = folder / "peak.txt"
    r = subprocess.run([sys.executable, "-c", _WITH_PEAK, str(report), *args], capture_output=True, text=True,
                       timeout=900)
    peak = int(report.read_text()) * 1024
    report.unlink()
    return peak, r


@pytest.mark.slow
def test_cli_offload_lowers_peak_memory(tmp_path):
    """`quantize imatrix --engine torch` on SmolLM2 (135M parameters, 0.54 GB in float32) held whole, then with
    `--max-memory cpu=1MB --offload-folder`: every module on the disk, the same imatrix, and a peak RSS lower by at
    least half the model's float32 size. Each run in its own subprocess (a fresh interpreter, its own peak)."""
    model = fixtures.smollm2()
    common = ["imatrix", str(model), "--ctx", str(CTX), "--chunks", "2", "--json", "--no-progress", "--threads", "2"]
    whole_peak, r = _peak_rss([*common, "--engine", "torch", "-o", str(tmp_path / "whole.gguf")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "device_map" not in json.loads(r.stdout)
    off = tmp_path / "offload"
    disk_peak, r = _peak_rss([*common, "--max-memory", "cpu=1MB", "--offload-folder", str(off),
                              "-o", str(tmp_path / "disk.gguf")], tmp_path)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)  # stdout is only the JSON: the placement line went to stderr
    _disk_offloaded(stats)
    assert set(stats["device_map"].values()) == {"disk"}
    assert "placement disk" in r.stderr
    assert max(differences(read_imatrix(tmp_path / "disk.gguf"), read_imatrix(tmp_path / "whole.gguf")).values()) \
        < 1e-6
    model_bytes = 4 * sum(int(np.prod(t.shape)) for t in Checkpoint(model).tensors.values())  # float32
    assert model_bytes > 500e6
    print(f"peak RSS: whole model {whole_peak / 2**20:.0f} MiB, disk-offloaded {disk_peak / 2**20:.0f} MiB "
          f"(float32 weights {model_bytes / 2**20:.0f} MiB)")
    assert disk_peak < whole_peak - model_bytes // 2, (disk_peak / 2**20, whole_peak / 2**20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.gguf", "offload", "whole.gguf"]


def test_cli_placement_errors(tmp_path, converted):
    """Each bad placement option: a one-line error naming it, non-zero exit, no file; before any model loads."""
    model = str(fixtures.qwen2())
    out = tmp_path / "im.gguf"
    cases = [
        (["--max-memory", "cpu=lots"], "--max-memory", "lots"),
        (["--max-memory", "gpu0=1GiB"], "--max-memory", "gpu0"),
        (["--max-memory", "cpu"], "--max-memory", "DEVICE=SIZE"),
        (["--device-map", "everywhere"], "--device-map", "everywhere"),
        (["--device-map", "cpu", "--max-memory", "cpu=1GiB"], "--max-memory", "--device-map"),
        (["--engine", "llama", "--device-map", "auto"], "--device-map", "llama"),
        (["--device-map", "cpu", "--offload-folder", str(tmp_path / "off")], "--offload-folder", "--device-map"),
        (["--offload-folder", str(converted("qwen2", "f32"))], "--offload-folder", "not a folder"),
    ]
    if not torch.cuda.is_available():
        cases += [
            (["--device", "cuda"], "--device cuda", "CUDA"),
            (["--device-map", "cuda:0"], "--device-map", "CUDA"),
            (["--max-memory", "0=20GiB,cpu=30GiB"], "--max-memory", "CUDA"),
        ]
    for args, *words in cases:
        r = run("imatrix", model, "-o", str(out), "--no-progress", *args)
        assert_user_error(r, *words)
        assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
    r = run("imatrix", "--help")
    assert "--device-map" in r.stdout and "--max-memory" in r.stdout and "--offload-folder" in r.stdout


def test_option_values():
    """--max-memory and --device-map read as accelerate and transformers read them; the defaults they imply."""
    from gguf_forge.quant.placement import parse_max_memory, resolve

    assert parse_max_memory("0=20GiB, cuda:1=1.5GB ,cpu=512MiB") == {0: 20 * 2**30, 1: 1_500_000_000,
                                                                      "cpu": 512 * 2**20}
    assert parse_max_memory("cpu=100000") == {"cpu": 100_000}
    assert resolve("cpu", None, None, None).device_map is None  # the whole model in memory, no accelerate
    assert resolve("cuda", None, None, None).device_map == "auto"
    assert resolve("cpu", None, "cpu=1GiB", None).device_map == "auto"
    assert resolve("cpu", "CUDA:1", None, None).device_map == "cuda:1"
    assert resolve("cpu", "balanced", {0: 5}, None).max_memory == {0: 5}


def test_one_device_map_is_the_whole_model_there():
    """`--device-map cpu`: transformers puts the whole model on the CPU (nothing offloaded), same statistic."""
    plain, _ = compute_imatrix(fixtures.qwen2(), ctx=CTX, chunks=2, engine="torch", progress=False)
    placed, stats = compute_imatrix(fixtures.qwen2(), ctx=CTX, chunks=2, device_map="cpu", progress=False)
    assert stats["engine"] == "torch" and stats["offloaded"] is False and stats["device_map"] == {"": "cpu"}, stats
    assert max(differences(placed, plain).values()) == 0.0


def test_merge_convert_places_the_torch_engine(tmp_path):
    """merge-convert takes quantize imatrix's placement options: any of them selects the torch engine, the model is
    placed as asked (here every module on the disk), the manifest says where; misuse is a one-line error before
    any work (no output folder)."""
    model = str(fixtures.qwen2())
    out = tmp_path / "out"
    base = ["merge-convert", "--base", model, "-o", str(out), "--no-progress"]
    cases = [
        (["--device-map", "auto"], "--device-map", "--imatrix"),
        (["--imatrix", "default", "--imatrix-engine", "llama", "--max-memory", "cpu=1GiB"], "--max-memory",
         "--imatrix-engine"),
        (["--imatrix", "default", "--max-memory", "cpu=lots"], "--max-memory", "lots"),
        (["--imatrix", "default", "--device-map", "cpu", "--offload-folder", str(tmp_path)], "--offload-folder"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--imatrix", "default", "--device-map", "cuda:0"], "--device-map", "CUDA"))
    for args, *words in cases:
        assert_user_error(run(*base, *args), *words)
        assert not out.exists()
    (tmp_path / "off").mkdir()
    r = run(*base, "--imatrix", "default", "--imatrix-chunks", "2", "--max-memory", "cpu=100KB", "--offload-folder",
            str(tmp_path / "off"), "--json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["options"]["imatrix_engine"] == "torch"
    record = manifest["imatrix"]
    assert record["engine"] == "torch" and record["offloaded"], record
    assert set(record["device_map"].values()) == {"disk"} and set(record["modules_per_device"]) == {"disk"}, record
    assert read_imatrix(out / "imatrix.gguf").counts["blk.0.attn_q.weight"].tolist() == [2 * 512]
    assert list((tmp_path / "off").iterdir()) == []  # its temporary folder removed

