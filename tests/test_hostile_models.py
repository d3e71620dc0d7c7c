"""Hostile and broken model input (issue 14, causes 5, 7 and 8): every case is one `error:` line and exit 2.

Broken config.json values, safetensors headers, shard indexes, tokenizers, pickles and adapters, out-of-range
overrides and non-finite numbers are refused before anything is written (or, for NaN/Inf weights found while
streaming, with the partial file removed): no traceback, nothing under the output's name, nothing else in the
output folder. The commands run in this process through click's runner (the same `main` and error boundary as
the `quantize` script); two cases run the real script to show the one-line message end to end.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from gguf_forge.convert.checkpoint import NonFiniteError, check_finite, nonfinite_at

from helpers import assert_user_error, run
from hostile import (
    assert_nothing_written,
    cli,
    copy_model,
    edit_json,
    make_adapter,
    st_edit,
    st_read,
    st_write,
    write_json,
)


# -- the cases ------------------------------------------------------------------------------------------------------
# each: (id, change(model folder) -> extra CLI args or None, words the error line must contain)
def _cfg(**values) -> Callable[[Path], None]:
    return lambda m: edit_json(m / "config.json", lambda c: c.update(values))


def _cfg_raw(text: str) -> Callable[[Path], None]:
    def change(m: Path) -> None:
        (m / "config.json").unlink()
        (m / "config.json").write_text(text)
    return change


def _del_cfg(key: str) -> Callable[[Path], None]:
    return lambda m: edit_json(m / "config.json", lambda c: c.pop(key))


CONFIG_CASES = [
    ("config-array", _cfg_raw("[]"), ["config.json", "JSON object"]),
    ("config-not-utf8", lambda m: (m / "config.json").write_bytes(b'{"a": "\xff\xfe"}'), ["config.json"]),
    ("layers-string", _cfg(num_hidden_layers="x"), ["config.json", "num_hidden_layers", "positive integer", '"x"']),
    ("layers-bool", _cfg(num_hidden_layers=True), ["num_hidden_layers", "true"]),
    ("layers-huge", _cfg(num_hidden_layers=10**6), ["num_hidden_layers", "512"]),
    ("heads-zero", _cfg(num_attention_heads=0), ["config.json", "num_attention_heads", "positive integer", "got 0"]),
    ("hidden-negative", _cfg(hidden_size=-64), ["hidden_size", "-64"]),
    ("ffn-negative", _cfg(intermediate_size=-1), ["intermediate_size"]),
    ("vocab-zero", _cfg(vocab_size=0), ["vocab_size"]),
    ("vocab-float", _cfg(vocab_size=3008.5), ["vocab_size", "3008.5"]),
    ("ctx-2^40", _cfg(max_position_embeddings=2**40), ["max_position_embeddings", "32 bits"]),
    ("kv-heads-zero", _cfg(num_key_value_heads=0), ["num_key_value_heads"]),
    ("head-dim-string", _cfg(head_dim="16"), ["head_dim"]),
    ("heads-do-not-divide-hidden", _cfg(num_attention_heads=6, num_key_value_heads=6),
     ["hidden_size 64", "num_attention_heads 6"]),
    ("kv-heads-do-not-divide", _cfg(num_key_value_heads=3), ["num_attention_heads 4", "num_key_value_heads 3"]),
    ("head-dim-odd", _cfg(head_dim=15), ["head_dim 15", "even"]),
    ("eps-nan", _cfg(rms_norm_eps=math.nan), ["rms_norm_eps", "finite"]),
    ("eps-negative", _cfg(rms_norm_eps=-1e-6), ["rms_norm_eps"]),
    ("theta-overflows-f32", _cfg(rope_parameters={"rope_theta": 1e39, "rope_type": "default"}),
     ["rope_parameters.rope_theta", "float32"]),
    ("theta-infinite", _cfg(rope_theta=math.inf, rope_parameters=None), ["rope_theta", "finite"]),
    ("yarn-without-factor", _cfg(rope_parameters={"rope_theta": 1e6, "rope_type": "yarn"}),
     ["rope_parameters.factor", "yarn"]),
    ("linear-factor-zero", _cfg(rope_scaling={"type": "linear", "factor": 0}, rope_parameters=None),
     ["rope_scaling.factor"]),
    ("llama3-low-equals-high", _cfg(rope_parameters={"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0,
                                                     "low_freq_factor": 4.0, "high_freq_factor": 4.0}),
     ["high_freq_factor", "low_freq_factor"]),
    ("rope-unsupported", _cfg(rope_parameters={"rope_theta": 1e6, "rope_type": "longrope"}), ["longrope"]),
    ("rope-scaling-string", _cfg(rope_scaling="linear", rope_parameters=None), ["rope_scaling", "object"]),
    ("tie-string", _cfg(tie_word_embeddings="false"), ["tie_word_embeddings", "true or false"]),
    ("architectures-string", _cfg(architectures="Qwen2ForCausalLM"), ["architectures", "list"]),
    ("eos-negative", _cfg(eos_token_id=-1), ["eos_token_id"]),
    ("name-or-path-number", _cfg(_name_or_path=5), ["_name_or_path", "string"]),
    ("hidden-missing", _del_cfg("hidden_size"), ["config.json", "hidden_size"]),
    ("ffn-mismatches-weights", _cfg(intermediate_size=100), ["intermediate_size", "config.json implies"]),
    ("text-config-list", _cfg(text_config=[1]), ["text_config"]),
]


def _tensor(header: dict, suffix: str) -> dict:
    return header[next(k for k in sorted(header) if k.endswith(suffix))]


def _st(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda m: st_edit(m / "model.safetensors", change)


def _overlap(h: dict) -> None:
    """A second tensor's data_offsets point into the first one's bytes (same size, so sizes still agree)."""
    a, b = _tensor(h, "layers.0.input_layernorm.weight"), _tensor(h, "layers.0.post_attention_layernorm.weight")
    b["data_offsets"] = list(a["data_offsets"])


def _beyond(h: dict) -> None:
    """The last tensor grows (shape and offsets agree) past the end of the file."""
    last = h[max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])]
    begin, end = last["data_offsets"]
    last["shape"][0] *= 2
    last["data_offsets"] = [begin, end + (end - begin)]


def _trailing(m: Path) -> None:
    with open(m / "model.safetensors", "ab") as f:
        f.write(b"\0" * 64)


def _header_length(m: Path) -> None:
    raw = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").unlink()
    (m / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + raw[8:])


def _gap(h: dict) -> None:
    last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
    del h[last]  # its bytes stay in the file, owned by no tensor


SAFETENSORS_CASES = [
    ("header-array", lambda m: st_write(m / "model.safetensors", [1, 2], st_read(m / "model.safetensors")[1]),
     ["model.safetensors", "corrupt safetensors header"]),
    ("header-not-json", lambda m: st_write(m / "model.safetensors", b"{not json", b""), ["corrupt safetensors header"]),
    ("header-length-huge", _header_length, ["model.safetensors", "not a safetensors file"]),
    ("entry-string", _st(lambda h: h.update({"model.norm.weight": "x"})), ["model.norm.weight", "header entry"]),
    ("no-data-offsets", _st(lambda h: _tensor(h, "norm.weight").pop("data_offsets")), ["data_offsets"]),
    ("no-dtype", _st(lambda h: _tensor(h, "norm.weight").pop("dtype")), ["dtype"]),
    ("shape-float", _st(lambda h: _tensor(h, "norm.weight").update(shape=[64.0])), ["shape", "non-negative"]),
    ("shape-negative", _st(lambda h: _tensor(h, "q_proj.weight").update(shape=[-64, -64])), ["shape", "-64"]),
    ("shape-string", _st(lambda h: _tensor(h, "norm.weight").update(shape="64")), ["shape"]),
    ("offsets-reversed", _st(lambda h: _tensor(h, "norm.weight").update(
        data_offsets=_tensor(h, "norm.weight")["data_offsets"][::-1])), ["data_offsets", "begin <= end"]),
    ("offsets-negative", _st(lambda h: _tensor(h, "norm.weight").update(data_offsets=[-256, 0])), ["data_offsets"]),
    ("offsets-three", _st(lambda h: _tensor(h, "norm.weight").update(data_offsets=[0, 1, 2])), ["data_offsets"]),
    ("offsets-overlap", _st(_overlap), ["model.safetensors", "overlaps"]),
    ("offsets-gap", _st(_gap), ["belong to no tensor"]),
    ("offsets-beyond-file", _st(_beyond), ["model.safetensors", "truncated", "ends at byte"]),
    ("offsets-far-away", _st(lambda h: _tensor(h, "model.norm.weight").update(data_offsets=[10**9, 10**9 + 256])),
     ["model.safetensors"]),
    ("dtype-size-mismatch", _st(lambda h: _tensor(h, "model.norm.weight").update(dtype="F16")),
     ["model.norm.weight", "inconsistent size"]),
    ("shape-size-mismatch", _st(lambda h: _tensor(h, "model.norm.weight").update(shape=[32])),
     ["model.norm.weight", "inconsistent size"]),
    ("dtype-unknown", _st(lambda h: _tensor(h, "model.norm.weight").update(dtype="F8_E4M3")), ["unsupported dtype"]),
    ("dtype-number", _st(lambda h: _tensor(h, "model.norm.weight").update(dtype=5)), ["unsupported dtype"]),
    ("metadata-not-strings", _st(lambda h: h.update({"__metadata__": {"format": 1}})), ["__metadata__"]),
    ("bytes-after-data", _trailing, ["model.safetensors", "after the last tensor"]),
    ("truncated", lambda m: os.truncate(m / "model.safetensors", (m / "model.safetensors").stat().st_size - 100),
     ["model.safetensors", "truncated"]),
]


def _sharded(change: Callable[[Path, dict], object]) -> Callable[[Path], None]:
    """The model as one indexed shard, then ``change(model, index)`` rewrites the index."""
    def apply(m: Path) -> None:
        shard = m / "model-00001-of-00001.safetensors"
        (m / "model.safetensors").rename(shard)
        header, _ = st_read(shard)
        index = {"metadata": {}, "weight_map": {k: shard.name for k in header if k != "__metadata__"}}
        change(m, index)
        write_json(m / "model.safetensors.index.json", index)
    return apply


def _escape_by_link(m: Path, index: dict) -> None:
    outside = m.parent / "elsewhere"
    outside.mkdir()
    (m / "model-00001-of-00001.safetensors").rename(outside / "secret.safetensors")
    (m / "model-00001-of-00001.safetensors").symlink_to(outside / "secret.safetensors")


def _escape_by_folder_link(m: Path, index: dict) -> None:
    outside = m.parent / "elsewhere"
    outside.mkdir()
    (m / "model-00001-of-00001.safetensors").rename(outside / "model-00001-of-00001.safetensors")
    (m / "sub").symlink_to(outside)
    index["weight_map"] = {k: "sub/model-00001-of-00001.safetensors" for k in index["weight_map"]}


def _point_outside(target: str) -> Callable[[Path, dict], None]:
    def change(m: Path, index: dict) -> None:
        first = next(iter(index["weight_map"]))
        index["weight_map"][first] = target
    return change


INDEX_CASES = [
    ("weight-map-list", _sharded(lambda m, ix: ix.update(weight_map=list(ix["weight_map"]))), ["weight_map"]),
    ("weight-map-missing", _sharded(lambda m, ix: ix.pop("weight_map")), ["weight_map"]),
    ("weight-map-number-value", _sharded(_point_outside(5)), ["weight_map", "file name"]),  # type: ignore[arg-type]
    ("index-array", lambda m: (_sharded(lambda m, ix: None)(m), write_json(m / "model.safetensors.index.json", [1])),
     ["model.safetensors.index.json", "JSON object"]),
    ("shard-dotdot", _sharded(_point_outside("../../other/model.safetensors")), ["weight_map", "inside the model folder"]),
    ("shard-absolute", _sharded(_point_outside("/etc/passwd")), ["weight_map", "/etc/passwd"]),
    ("shard-link-escapes", _sharded(_escape_by_link), ["weight_map", "outside the model folder"]),
    ("shard-folder-link-escapes", _sharded(_escape_by_folder_link), ["weight_map", "outside the model folder"]),
    ("index-misplaces-tensor", _sharded(lambda m, ix: ix["weight_map"].update({"model.ghost.weight": ix[
        "weight_map"]["model.norm.weight"]})), ["model.ghost.weight", "does not hold it"]),
]


def _tokenizer(text: str, name: str = "tokenizer.json") -> Callable[[Path], None]:
    def change(m: Path) -> None:
        (m / name).unlink()
        (m / name).write_text(text)
    return change


def _tok_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda m: edit_json(m / "tokenizer.json", change)


TOKENIZER_CASES = [
    ("tokenizer-array", _tokenizer("[1, 2]"), ["tokenizer.json", "JSON object"]),
    ("tokenizer-model-number", _tok_edit(lambda t: t.update(model=5)), ["tokenizer.json", "model"]),
    ("tokenizer-negative-id", _tok_edit(lambda t: t["model"]["vocab"].update({"hello": -5})), ["model.vocab"]),
    ("tokenizer-added-id-string", _tok_edit(lambda t: t["added_tokens"][0].update(id="7")), ["added_tokens"]),
    ("tokenizer-id-beyond-embedding", _tok_edit(lambda t: t["model"]["vocab"].update({"zzz": 10**6})),
     ["tokenizer.json", "rows"]),
    ("tokenizer-config-array", _tokenizer("[]", "tokenizer_config.json"), ["tokenizer_config.json"]),
    ("model-card-bad-yaml", _tokenizer("---\nlicense: [unclosed\n---\n", "README.md"), ["README.md"]),
    ("generation-config-top-k-overflows", _tokenizer('{"top_k": 1099511627776}', "generation_config.json"),
     ["metadata", "top_k", "1099511627776"]),
]


MODEL_CASES = [pytest.param(c, w, False, id=f"qwen2-{i}")
               for i, c, w in CONFIG_CASES + SAFETENSORS_CASES + INDEX_CASES + TOKENIZER_CASES]
MODEL_CASES += [pytest.param(c, w, True, id=f"as-llama-{i}") for i, c, w in CONFIG_CASES]  # Q/K rows permuted


@pytest.mark.parametrize("change, words, llama", MODEL_CASES)
def test_broken_model_is_one_line_and_nothing_written(tmp_path, change, words, llama):
    m = copy_model(tmp_path / "model", llama=llama)
    change(m)
    out = tmp_path / "out"
    out.mkdir()
    assert_user_error(cli("convert", m, "-o", out / "m.gguf", "--no-progress"), *words)
    assert_nothing_written(out)


# -- pickles ----------------------------------------------------------------------------------------------------------
def _bin_model(tmp_path: Path, payload: object) -> Path:
    import torch

    m = copy_model(tmp_path / "bin-model")
    (m / "model.safetensors").unlink()
    torch.save(payload, m / "pytorch_model.bin")
    return m


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("kind", ["list", "not-tensors", "code"])
def test_bin_checkpoints_that_are_not_tensor_dicts(tmp_path, kind):
    import torch

    payload = {"list": [torch.zeros(2)], "not-tensors": {"a": 5}, "code": {"a": _Evil()}}[kind]
    m = _bin_model(tmp_path, payload)
    out = tmp_path / "out"
    out.mkdir()
    r = cli("convert", m, "-o", out / "m.gguf", "--no-progress")
    words = {"list": ["pytorch_model.bin", "holds a list"], "not-tensors": ["'a'", "not a tensor"],
             "code": ["pytorch_model.bin", "safe loader", "nothing in it was run"]}[kind]
    assert_user_error(r, *words)
    assert "weights_only=False" not in r.stderr
    assert not (Path.cwd() / "pwned").exists() and not (m / "pwned").exists()
    assert_nothing_written(out)


def test_malicious_pickle_through_the_real_script_is_one_line(tmp_path):
    """End to end (a real `quantize` process): one line, no advice to load it unsafely."""
    m = _bin_model(tmp_path, {"a": _Evil()})
    out = tmp_path / "out"
    out.mkdir()
    r = run("convert", str(m), "-o", str(out / "m.gguf"))
    assert_user_error(r, "pytorch_model.bin", "nothing in it was run")
    assert "weights_only" not in r.stderr
    assert_nothing_written(out)


# -- adapters ---------------------------------------------------------------------------------------------------------
def _adapter_cfg(**values) -> Callable[[Path], None]:
    return lambda a: edit_json(a / "adapter_config.json", lambda c: c.update(values))


def _adapter_st(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda a: st_edit(a / "adapter_model.safetensors", change)


def _one_d_lora_a(h: dict) -> None:
    key = next(k for k in sorted(h) if k.endswith("lora_A.weight"))
    r, cols = h[key]["shape"]
    h[key]["shape"] = [r * cols]


def _adapter_bin_list(a: Path) -> None:
    import torch

    (a / "adapter_model.safetensors").unlink()
    torch.save([torch.zeros(2)], a / "adapter_model.bin")


def _dora_magnitude_wrong_size(a: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(a / "adapter_model.safetensors")
    key = next(k for k in sorted(tensors) if k.endswith("lora_A.weight"))
    tensors[key.replace("lora_A.weight", "lora_magnitude_vector")] = np.ones(7, dtype="f4")
    (a / "adapter_model.safetensors").unlink()
    save_file(tensors, a / "adapter_model.safetensors")


ADAPTER_CASES = [
    ("adapter-config-array", lambda a: write_json(a / "adapter_config.json", [1]),
     ["adapter_config.json", "JSON object"]),
    ("r-string", _adapter_cfg(r="four"), ["adapter_config.json", "r must be", '"four"']),
    ("r-zero", _adapter_cfg(r=0), ["r must be", "got 0"]),
    ("r-mismatch", _adapter_cfg(r=8), ["rank 4", "r=8"]),
    ("alpha-string", _adapter_cfg(lora_alpha="big"), ["lora_alpha", '"big"']),
    ("alpha-infinite", _adapter_cfg(lora_alpha=math.inf), ["lora_alpha", "finite"]),
    ("rank-pattern-bad-regex", _adapter_cfg(rank_pattern={"q_proj(": 4}), ["rank_pattern", "regular expression"]),
    ("rank-pattern-list", _adapter_cfg(rank_pattern=[4]), ["rank_pattern"]),
    ("rslora-string", _adapter_cfg(use_rslora="yes"), ["use_rslora"]),
    ("base-name-number", _adapter_cfg(base_model_name_or_path=7), ["base_model_name_or_path"]),
    ("lora-a-one-dimensional", _adapter_st(_one_d_lora_a), ["lora_A", "matrices"]),
    ("adapter-bin-list", _adapter_bin_list, ["adapter_model.bin", "holds a list"]),
    ("adapter-header-array", lambda a: st_write(a / "adapter_model.safetensors", [], b""),
     ["adapter_model.safetensors", "corrupt safetensors header"]),
    ("adapter-int-tensor", _adapter_st(lambda h: _tensor(h, "lora_A.weight").update(dtype="I32")),
     ["adapter weights are floats"]),
    ("dora-magnitude-wrong-size", _dora_magnitude_wrong_size, ["lora_magnitude_vector", "7 values"]),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return copy_model(tmp_path_factory.mktemp("base") / "Tiny-Qwen2")


@pytest.mark.parametrize("change, words", [pytest.param(c, w, id=i) for i, c, w in ADAPTER_CASES])
def test_broken_adapter_is_one_line_for_convert_and_merge(tmp_path, base, change, words):
    a = make_adapter(tmp_path / "adapter", base)
    change(a)
    out = tmp_path / "out"
    out.mkdir()
    assert_user_error(cli("convert", base, "--lora", a, "-o", out / "m.gguf", "--no-progress"), *words)
    assert_user_error(cli("merge", "--base", base, "--lora", a, "-o", out / "merged", "--no-progress"), *words)
    assert_nothing_written(out)


# -- options with numbers out of range --------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    pytest.param(["--lora", "{a}:nan"], ["--lora", ":nan", "finite"], id="lora-weight-nan"),
    pytest.param(["--lora", "{a}:inf"], ["--lora", ":inf", "finite"], id="lora-weight-inf"),
    pytest.param(["--lora", "{a}:-Infinity"], ["--lora", "finite"], id="lora-weight-minus-inf"),
    pytest.param(["--lora", "{a}:1e400"], ["--lora", "finite"], id="lora-weight-overflows"),
    pytest.param(["--rope-theta", "nan"], ["--rope-theta", "finite"], id="rope-theta-nan"),
    pytest.param(["--rope-theta", "inf"], ["--rope-theta", "finite"], id="rope-theta-inf"),
    pytest.param(["--rope-theta", "1e39"], ["--rope-theta", "float32"], id="rope-theta-overflows-f32"),
    pytest.param(["--override-kv", "qwen2.context_length=int:-1"], ["--override-kv", "qwen2.context_length",
                                                                     "uint32"], id="override-negative-uint32"),
    pytest.param(["--override-kv", "qwen2.context_length=int:4294967296"], ["--override-kv", "uint32"],
                 id="override-overflows-uint32"),
    pytest.param(["--override-kv", "general.x=int:2147483648"], ["--override-kv", "int32"],
                 id="override-new-key-overflows-int32"),
    pytest.param(["--override-kv", "qwen2.rope.freq_base=float:1e300"], ["--override-kv", "float32"],
                 id="override-float-overflows"),
    pytest.param(["--override-kv", "qwen2.rope.freq_base=float:nan"], ["--override-kv", "finite"],
                 id="override-float-nan"),
    pytest.param(["--ctx", "5000000000"], ["--ctx"], id="ctx-overflows"),
])
def test_out_of_range_options(tmp_path, base, args, words):
    a = make_adapter(tmp_path / "adapter", base)
    out = tmp_path / "out"
    out.mkdir()
    args = [x.format(a=a) for x in args]
    r = cli("convert", base, "-o", out / "m.gguf", "--no-progress", *args)
    if args[0] == "--ctx":  # refused by click's range check (its usage error is formatted by the CLI's owner)
        assert r.returncode == 2 and "--ctx" in r.stderr
    else:
        assert_user_error(r, *words)
    if args[0] == "--lora":
        assert_user_error(cli("merge", "--base", base, *args, "-o", out / "merged", "--no-progress"), *words)
    assert_nothing_written(out)


# -- non-finite weights -------------------------------------------------------------------------------------------------
def _poison(path: Path, suffix: str, value: float, row: int = 3) -> str:
    """Put ``value`` into row ``row`` of the first tensor named ``*suffix`` (f32 or bf16 data); its name."""
    header, data = st_read(path)
    name = next(k for k in sorted(header) if k.endswith(suffix))
    info = header[name]
    begin = info["data_offsets"][0]
    row_bytes = (info["data_offsets"][1] - begin) // info["shape"][0]
    if info["dtype"] == "F32":
        raw = np.float32(value).tobytes()
    else:
        raw = (np.array([value], dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    at = begin + row * row_bytes + 2 * len(raw)
    data = data[:at] + raw + data[at + len(raw):]
    st_write(path, header, data)
    return name


@pytest.mark.parametrize("fixture, value, outtype", [
    pytest.param("qwen2", math.nan, "f16", id="f32-nan-to-f16"),
    pytest.param("qwen2", math.inf, "q8_0", id="f32-inf-to-q8_0"),
    pytest.param("qwen3", -math.inf, "bf16", id="bf16-minus-inf-to-bf16"),
    pytest.param("qwen3", math.nan, "f32", id="bf16-nan-to-f32"),
])
def test_nonfinite_weights_are_refused_naming_the_tensor(tmp_path, fixture, value, outtype):
    m = copy_model(tmp_path / "model", fixture)
    name = _poison(m / "model.safetensors", "mlp.up_proj.weight", value)
    out = tmp_path / "out"
    out.mkdir()
    r = cli("convert", m, "-o", out / "m.gguf", "--outtype", outtype, "--no-progress")
    assert_user_error(r, name, "NaN or infinite", "row 3", "--allow-nonfinite")
    assert_nothing_written(out)
    # with the override the file is written, as it is
    r = cli("convert", m, "-o", out / "m.gguf", "--outtype", outtype, "--no-progress", "--allow-nonfinite")
    assert r.returncode == 0, r.stderr
    assert (out / "m.gguf").is_file()


def test_nonfinite_weights_refused_by_merge_unless_allowed(tmp_path):
    m = copy_model(tmp_path / "model")
    name = _poison(m / "model.safetensors", "self_attn.q_proj.weight", math.nan)
    a = make_adapter(tmp_path / "adapter", m)
    out = tmp_path / "out"
    out.mkdir()
    assert_user_error(cli("merge", "--base", m, "--lora", a, "-o", out / "merged", "--no-progress"),
                      name, "NaN or infinite", "--allow-nonfinite")
    assert_user_error(cli("convert", m, "--lora", a, "-o", out / "m.gguf", "--no-progress"), name, "NaN")
    assert_nothing_written(out)
    r = cli("merge", "--base", m, "--lora", a, "-o", out / "merged", "--no-progress", "--allow-nonfinite")
    assert r.returncode == 0, r.stderr
    assert (out / "merged" / "model.safetensors").is_file()


def test_merge_that_overflows_is_refused(tmp_path, base):
    """A huge lora_alpha makes finite factors overflow: the merged tensor is checked, not only the inputs."""
    a = make_adapter(tmp_path / "adapter", base, alpha=1e38, std=10.0)  # scale 2.5e37, B @ A ~ 100
    out = tmp_path / "out"
    out.mkdir()
    r = cli("convert", base, "--lora", f"{a}:1e10", "-o", out / "m.gguf", "--outtype", "f32", "--no-progress")
    assert_user_error(r, "q_proj", "does not fit a float32")  # the scale itself
    r = cli("convert", base, "--lora", a, "-o", out / "m.gguf", "--outtype", "f32", "--no-progress")
    assert_user_error(r, "q_proj", "NaN or infinite")  # the merged values
    assert_nothing_written(out)


def test_f16_overflow_is_refused(tmp_path):
    m = copy_model(tmp_path / "model")
    name = _poison(m / "model.safetensors", "mlp.down_proj.weight", 1e6)  # finite in f32, infinite in f16
    out = tmp_path / "out"
    out.mkdir()
    assert_user_error(cli("convert", m, "-o", out / "m.gguf", "--outtype", "f16", "--no-progress"), name, "float16")
    assert_nothing_written(out)
    assert cli("convert", m, "-o", out / "m.gguf", "--outtype", "bf16", "--no-progress").returncode == 0


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_nonfinite_detection_by_type(dtype):
    f32 = np.linspace(-2, 2, 4096, dtype=np.float32).reshape(64, 64)
    as_type = {"F32": lambda x: x, "F16": lambda x: x.astype(np.float16), "F64": lambda x: x.astype(np.float64),
               "BF16": lambda x: (x.view(np.uint32) >> 16).astype(np.uint16)}[dtype]
    assert nonfinite_at(as_type(f32), dtype) is None
    for bad in (math.nan, math.inf, -math.inf):
        x = f32.copy()
        x[9, 5] = bad
        assert nonfinite_at(as_type(x), dtype) == 9 * 64 + 5
        with pytest.raises(NonFiniteError, match="row 19"):
            check_finite(as_type(x), dtype, "t", first_row=10)
    assert nonfinite_at(np.zeros(0, np.float32), "F32") is None


def test_config_error_through_the_real_script_is_one_line(tmp_path):
    m = copy_model(tmp_path / "model")
    edit_json(m / "config.json", lambda c: c.update(num_attention_heads=0))
    out = tmp_path / "out"
    out.mkdir()
    assert_user_error(run("convert", str(m), "-o", str(out / "m.gguf")), "config.json", "num_attention_heads", "got 0")
    assert_nothing_written(out)
