"""`quantize chat`: a scripted multi-turn chat keeps its history, stops cleanly, trims to the context; bad files."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import QUANTIZE, assert_user_error, run

# SmolLM2-135M-Instruct, greedy, on 1 thread (robust when the test machine is busy: llama.cpp's threads spin).
# A 135M model recalls a fact from two turns back only when it can copy it; the f32 file is used because greedy
# replies of quantized files vary between CPUs (AVX2 / AVX-512 / AMX sum in different orders). Measured on one
# CPU: recalled by the f32, f16 and q8_0 files, and by none when the history is dropped.
FACT = "The secret word is BANANA."
QUESTION = "What is the secret word?"
RECALL = "BANANA"


def chat(model, script: str, *args: str) -> subprocess.CompletedProcess:
    """``quantize chat MODEL`` with ``script`` on stdin (a pipe, as a user's script would give it)."""
    return subprocess.run([*QUANTIZE, "chat", str(model), "--threads", "1", *args], input=script,
                          capture_output=True, text=True, env=os.environ)


def replies(stdout: str) -> list[str]:
    """The assistant's replies from the transcript on stdout."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("assistant> "):
            out.append(line[len("assistant> "):])
        elif line.startswith("user> "):
            continue
        elif out:
            out[-1] += "\n" + line
    return out


@pytest.mark.slow
def test_scripted_chat_keeps_history_and_stops_each_reply(converted):
    f32 = converted("smollm2", "f32")
    r = chat(f32, f"{FACT}\nWhat is the capital of France?\n{QUESTION}\n/exit\nnever read\n", "--max-tokens", "128")
    assert r.returncode == 0, r.stderr
    said = replies(r.stdout)
    assert len(said) == 3, r.stdout  # /exit ends the chat
    assert "Paris" in said[1]
    assert RECALL in said[2], said  # the third reply uses the fact from the first turn
    assert "[reply cut" not in r.stderr  # every reply ended with an end-of-turn token
    assert not any("<|im_" in s or s.lstrip().startswith("assistant") for s in said)
    assert "generation:" in r.stderr.splitlines()[-1] and "tok/s" in r.stderr.splitlines()[-1]

    # the same turns with the history forgotten before the question: the word is gone, so the test above
    # would fail if history were dropped
    r = chat(f32, f"{FACT}\nWhat is the capital of France?\n/reset\n{QUESTION}\n", "--max-tokens", "128")
    assert r.returncode == 0, r.stderr
    said = replies(r.stdout)
    assert len(said) == 3 and RECALL not in said[2], said
    assert "conversation cleared" in r.stderr


@pytest.mark.slow
def test_token_limit_is_reported(converted):
    r = chat(converted("smollm2", "q8_0"), "Write a Python function that returns the sum of a list.\n",
             "--max-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert "[reply cut at 5 tokens" in r.stderr
    assert "generation: 5 tokens" in r.stderr


@pytest.mark.slow
def test_history_is_trimmed_to_the_context_and_the_system_prompt_kept(converted):
    from gguf_forge.errors import ForgeError
    from gguf_forge.tools.chat import ChatSession

    system = "You are a terse assistant. Always answer in one short sentence."
    filler = "Here is a long note about the weather in spring, the colours of the trees and the rivers. " * 3
    with ChatSession(converted("smollm2", "q8_0"), system=system, ctx=256, threads=1, max_tokens=12) as s:
        assert s.n_ctx == 256
        s.say("First: " + filler)
        assert s.last.dropped_turns == 0
        for i in range(4):
            s.say(f"Note {i}: " + filler)
        # the conversation outgrew 256 tokens: the oldest turns went, the system prompt stayed
        assert sum(1 for m in s.history if m["role"] == "user") < 5
        assert not s.history[0]["content"].startswith("First")
        assert s.last.prompt.count(system) == 1 and "First:" not in s.last.prompt
        assert len(s.llm.tokenize(s.last.prompt.encode(), add_bos=False, special=True)) <= 256 - 12
        assert s.stats.gen_tokens > 0 and s.stats.gen_tps > 0 and s.stats.prompt_tps > 0
        # a message that cannot fit at all: a one-line error, and the conversation goes on
        before = list(s.history)
        with pytest.raises(ForgeError, match="too long"):
            s.say("word " * 400)
        assert s.history == before
        # /system: the new system prompt replaces the old one in the next prompt
        s.set_system("You are a pirate.")
        s.say("Hello")
        assert "You are a pirate." in s.last.prompt and system not in s.last.prompt


@pytest.mark.slow
def test_named_template_replaces_the_ggufs(converted):
    from gguf_forge.tools.chat import ChatSession

    q8 = converted("smollm2", "q8_0")
    with ChatSession(q8, threads=1, max_tokens=8) as own, ChatSession(q8, threads=1, max_tokens=8,
                                                                      template="chatml") as named:
        own.say("Hi")
        named.say("Hi")
    assert "You are a helpful AI assistant named SmolLM" in own.last.prompt  # SmolLM2's template default
    assert "SmolLM" not in named.last.prompt and named.last.prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_bad_model_files_are_one_line_errors(tmp_path, converted):
    import gguf
    import numpy as np

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello\n")
    truncated = tmp_path / "truncated.gguf"
    with open(converted("smollm2", "q8_0"), "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(40 * 2**20))
    alien = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(alien, arch="nosucharch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for cmd in ("chat", "smoke"):
        assert_user_error(run(cmd, str(tmp_path / "missing.gguf")), "missing.gguf", "no such file")
        assert_user_error(run(cmd, str(not_gguf)), "notes.gguf", "not a GGUF")
        assert_user_error(run(cmd, str(truncated)), "truncated.gguf", "truncated")
        assert_user_error(run(cmd, str(alien)), "alien.gguf", "unknown model architecture", "nosucharch")
    truncated.unlink()
