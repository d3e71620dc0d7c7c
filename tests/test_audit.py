"""`quantize audit` (issue 13): planted end-of-turn mismatches are found with their fix, `--fix` repairs what
metadata can repair, and a consistent model reports none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gguf_forge.keys import TOKENIZER
from gguf_forge.modelfiles import audit as audit_lib

from fixtures import qwen2
from helpers import run

SMALL = ("tokenizer_config.json", "tokenizer.json", "generation_config.json", "chat_template.jinja", "config.json")


def hf_copy(tmp_path: Path) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    for name in SMALL:
        if (qwen2() / name).is_file():
            shutil.copy(qwen2() / name, out / name)
    return out


def test_consistent_model_has_no_mismatch(tmp_path):
    r = run("audit", str(hf_copy(tmp_path)), "--json", "--no-generate")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] and data["turn_end"] == "<|im_end|>"


def test_wrong_eos_in_generation_config_is_found_and_fixed(tmp_path):
    model = hf_copy(tmp_path)
    gc = json.loads((model / "generation_config.json").read_text())
    gc["eos_token_id"] = 3001  # <|endoftext|>-like: not what the template closes turns with
    (model / "generation_config.json").write_text(json.dumps(gc))
    r = run("audit", str(model), "--json", "--no-generate")
    assert r.returncode == 1
    problems = json.loads(r.stdout)["mismatches"]
    assert len(problems) == 1 and "generation_config.json" in problems[0]["problem"] and problems[0]["fixable"]
    r = run("audit", str(model), "--fix", "--no-generate")
    assert r.returncode == 0, r.stdout
    assert json.loads((model / "generation_config.json").read_text())["eos_token_id"] == [3001, 3002]
    assert run("audit", str(model), "--no-generate").returncode == 0


@pytest.mark.slow
def test_eot_missing_from_gguf_is_found_and_fixed(tmp_path):
    model = hf_copy(tmp_path)
    gguf_path = tmp_path / "out" / "m.gguf"
    gguf_path.parent.mkdir()
    r = run("convert", str(qwen2()), "-o", str(gguf_path))
    assert r.returncode == 0, r.stderr
    # plant: eos is another token, no eot
    audit_lib.set_gguf_metadata(gguf_path, {TOKENIZER.EOS_ID: 3001}, remove=(TOKENIZER.EOT_ID,))
    a = audit_lib.audit(gguf_path, generate=False)
    kinds = [m.kind for m in a.mismatches]
    assert "gguf_eot" in kinds, a.mismatches
    done, left = audit_lib.fix(a)
    assert not left and done
    after = audit_lib.audit(gguf_path, generate=False)
    assert not after.mismatches, after.mismatches
    # the rewritten GGUF still loads and still ends on its eot
    from gguf_forge import runtime
    llm = runtime.load_model(gguf_path, n_ctx=64)
    assert 3002 in runtime.eog_tokens(llm)
    del model


@pytest.mark.slow
def test_model_that_ends_with_another_token_is_an_unfixable_mismatch(tmp_path):
    """SmolLM2 (trained to end replies with <|im_end|>) shipped with a template whose assistant turns close with
    <|endoftext|>: the greedy replies show it; metadata cannot fix it, so --fix exits 1."""
    from gguf_forge.convert.default_model import smollm2_gguf

    gguf_path = tmp_path / "m.gguf"
    shutil.copy(smollm2_gguf(), gguf_path)
    template = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
                "{% if message['role'] == 'assistant' %}{{ '<|endoftext|>\\n' }}{% else %}{{ '<|im_end|>\\n' }}"
                "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    audit_lib.set_gguf_metadata(gguf_path, {TOKENIZER.CHAT_TEMPLATE: template})
    a = audit_lib.audit(gguf_path)
    assert a.end == "<|endoftext|>"
    ends = next(s.value for s in a.signals if s.source.startswith("greedy"))
    assert "<|im_end|>" in ends, ends
    assert len(a.unfixable) == 1 and "<|im_end|>" in a.unfixable[0].problem
    done, left = audit_lib.fix(a)  # the eot id is written; the model's own end token is not fixable
    assert left == a.unfixable and any("eot_token_id" in d for d in done)
    text = audit_lib.table(a)
    assert "MISMATCH" in text and "cannot be fixed" in text


def test_missing_and_never_occurring_modelfile_stops(tmp_path):
    model = hf_copy(tmp_path)
    (model / "Modelfile").write_text('FROM ./m.gguf\nTEMPLATE """x"""\nPARAMETER stop "<|im_start|>"\n'
                                     'PARAMETER stop "<|bogus|>"\nPARAMETER num_ctx 4096\n')
    r = run("audit", str(model), "--json", "--no-generate")
    assert r.returncode == 1
    problems = [m["problem"] for m in json.loads(r.stdout)["mismatches"]]
    assert any("lack <|im_end|>" in p for p in problems) and any("'<|bogus|>' never occurs" in p for p in problems)
    assert run("audit", str(model), "--fix", "--no-generate").returncode == 0
    text = (model / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in text and "bogus" not in text and "num_ctx 4096" in text
    assert run("audit", str(model), "--no-generate").returncode == 0
