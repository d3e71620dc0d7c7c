"""`quantize smoke`: the default suite passes on SmolLM2 Q8_0, and each check fails when it should."""

from __future__ import annotations

import json

import pytest

from fixtures import fixture_dir
from helpers import assert_user_error, run

CAPITAL = "What is the capital of France?"


def smoke(*args: str):
    return run("smoke", *args, "--threads", "1", "--no-progress")


def table_row(stdout: str, name: str) -> dict[str, str]:
    """The table's row for file ``name``, as column -> cell (columns are separated by 2+ spaces)."""
    import re

    lines = stdout.splitlines()
    head = re.split(r"\s{2,}", lines[0].strip())
    row = next(ln for ln in lines[1:] if ln.startswith(name))
    return dict(zip(head, re.split(r"\s{2,}", row.strip())))


@pytest.mark.slow
def test_default_suite_passes_on_smollm2_q8(converted):
    q8 = converted("smollm2", "q8_0")
    r = smoke(str(q8), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    [report] = json.loads(r.stdout)
    assert report["passed"] and report["type"] == "Q8_0" and report["size_bytes"] == q8.stat().st_size
    prompts = report["prompts"]
    assert len(prompts) >= 6
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in p["prompt"]) for p in prompts)  # bilingual suite
    assert all(p["finish"] == "stop" and p["reply"].strip() for p in prompts)
    assert report["checks"]["expect"]["of"] >= 1  # the suite checks at least one answer, not only the form
    assert report["gen_tokens_per_s"] > 0 and report["prompt_tokens_per_s"] > 0
    assert report["peak_rss_bytes"] > 50 * 2**20


@pytest.mark.slow
def test_each_check_fails_and_is_named(tmp_path, converted):
    q8 = converted("smollm2", "q8_0")
    name = q8.name
    capital = tmp_path / "capital.txt"
    capital.write_text(CAPITAL + "\n")

    # a mismatching expect: only the expect check fails
    r = smoke(str(q8), "--prompts", str(capital), "--expect", "Berlin")
    assert r.returncode == 1, r.stdout + r.stderr
    row = table_row(r.stdout, name)
    assert row["expect"] == "FAIL 0/1" and row["stopped"] == "1/1" and row["no leak"] == "1/1"
    assert row["result"] == "FAIL"
    assert "FAIL expect:" in r.stdout and "Berlin" in r.stdout and "Paris" in r.stdout

    # the same prompt, a matching expect: passes (so the check above failed for the right reason)
    r = smoke(str(q8), "--prompts", str(capital), "--expect", "Paris")
    assert r.returncode == 0, r.stdout + r.stderr
    assert table_row(r.stdout, name)["result"] == "PASS"

    # --min-speed: a file too slow for this machine fails
    r = smoke(str(q8), "--prompts", str(capital), "--min-speed", "1000000")
    assert r.returncode == 1
    row = table_row(r.stdout, name)
    assert row["gen tok/s"].startswith("FAIL") and row["stopped"] == "1/1" and row["result"] == "FAIL"
    assert "FAIL speed:" in r.stdout

    # a token limit too small for the reply: "did not stop"
    r = smoke(str(q8), "--prompts", str(capital), "--max-tokens", "3")
    assert r.returncode == 1
    row = table_row(r.stdout, name)
    assert row["stopped"] == "FAIL 0/1" and row["not empty"] == "1/1"
    assert "FAIL stopped:" in r.stdout and "did not stop" in r.stdout

    # a template whose generation prompt omits the assistant header: the model writes one -> leak
    noheader = tmp_path / "no-assistant-header.jinja"
    noheader.write_text(NO_HEADER)
    r = smoke(str(q8), "--prompts", str(capital), "--template", str(noheader), "--json")
    assert r.returncode == 1
    [report] = json.loads(r.stdout)
    [p] = report["prompts"]
    assert p["checks"]["no_leak"] is False and "<|im_start|>assistant" in p["failures"]["no_leak"]
    assert p["checks"]["stopped"] is True  # the leak check alone catches it


NO_HEADER = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
             "'<|im_end|>' + '\n' }}{% endfor %}")


@pytest.mark.slow
def test_the_ggufs_own_template_is_used(tmp_path):
    """A GGUF whose stored template lacks the assistant header fails the leak check with no --template given."""
    capital = tmp_path / "capital.txt"
    capital.write_text(CAPITAL + "\n")
    out = tmp_path / "NoHeader-Q8_0.gguf"
    r = run("convert", str(fixture_dir("smollm2")), "-o", str(out), "--outtype", "q8_0", "--no-progress",
            "--override-kv", f"tokenizer.chat_template=str:{NO_HEADER}")
    assert r.returncode == 0, r.stderr
    r = smoke(str(out), "--prompts", str(capital))
    assert r.returncode == 1
    row = table_row(r.stdout, out.name)
    assert row["no leak"] == "FAIL 0/1" and row["stopped"] == "1/1"
    assert "FAIL no leak:" in r.stdout and "<|im_start|>assistant" in r.stdout
    out.unlink()


@pytest.mark.slow
def test_bad_suite_input_is_one_line_error(tmp_path, converted):
    q8 = str(converted("smollm2", "q8_0"))
    bad = tmp_path / "suite.jsonl"
    bad.write_text('{"prompt": "Hi"}\n{"prompt": "Hello", "expect": 3}\n')
    assert_user_error(smoke(q8, "--prompts", str(bad)), "suite.jsonl:2", "expect")
    bad.write_text('{"prompt": "Hi"}\nnot json\n')
    assert_user_error(smoke(q8, "--prompts", str(bad)), "suite.jsonl:2")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_user_error(smoke(q8, "--prompts", str(empty)), "empty.txt", "no prompts")
    assert_user_error(smoke(q8, "--prompts", str(tmp_path / "nope.txt")), "nope.txt", "no such file")
    assert_user_error(smoke(q8, "--expect", "(unclosed"), "--expect", "(unclosed")


def test_leak_finder_names_special_tokens_and_role_headers():
    from gguf_forge.tools.chat.smoke import find_leak

    specials = ["<|start_header_id|>", "<|end_header_id|>", "<start_of_turn>", "<|im_start|>", "<|eot_id|>"]
    assert "role header" in find_leak("Hi!<|im_start|>assistant\nHello", specials)
    assert "'<start_of_turn>model'" in find_leak("<start_of_turn>model\nHello", specials)
    assert "'<|start_header_id|>assistant'" in find_leak("<|start_header_id|>assistant<|end_header_id|>", specials)
    assert "special token '<|eot_id|>'" in find_leak("Paris.<|eot_id|>", specials)
    assert "role header" in find_leak("assistant\nThe capital is Paris.", specials)
    assert "role header" in find_leak("Paris.\nuser\nAnd Rome?", specials)
    for fine in ["The user asked about the assistant's role.", "Paris is the capital.\n\nUser: see above",
                 "In HTML, <h1> is a heading."]:
        assert find_leak(fine, specials) is None, fine
