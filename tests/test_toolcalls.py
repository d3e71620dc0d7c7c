"""Tool calls: the format each real template renders calls in is detected and read back; tools files are checked;
`quantize chat --tools` / `quantize smoke --tools --expect-tool` with the tool fixture (SmolLM2 + a tool LoRA)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gguf_forge import chat_template
from gguf_forge.errors import ForgeError
from gguf_forge.tools.chat import toolcalls

import adapters
from helpers import QUANTIZE, assert_user_error, run

TEMPLATES = Path(__file__).parent / "data" / "templates"
WEATHER = adapters.WEATHER_TOOL
# template -> the format it must be detected as
EXPECTED = {
    "Qwen-Qwen2.5-7B-Instruct": "hermes", "Qwen3.5-4B": "hermes", "Qwen3-Coder": "hermes",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "hermes", "GLM-4.6": "hermes",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral", "mistralai-Ministral-3-14B-Reasoning-2512": "mistral",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3", "ibm-granite-granite-3.3-2B-Instruct": "granite",
    "openai-gpt-oss-120b": "harmony", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "deepseek",
    "deepseek-ai-DeepSeek-V3.1": "deepseek", "google-gemma-4-31B-it": "gemma", "Kimi-K2-Instruct": "kimi",
}
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
# templates that do not render an assistant's tool_calls from OpenAI-shaped messages in transformers' sandbox
# (Kimi K2 appends to a list, which the immutable sandbox refuses; Hermes 2 Pro iterates a missing field;
# Granite 3.3 expects calls written into the content): their formats are checked by test_parse_formats
NO_ROUND_TRIP = {"Kimi-K2-Instruct", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
                 "ibm-granite-granite-3.3-2B-Instruct"}
# templates that never show the tools to the model (DeepSeek's R1 distills and V3.1 ignore `tools`)
NO_TOOLS_SECTION = {"deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai-DeepSeek-V3.1"}


def rendered_call(template: str, arguments) -> str:
    """What a model trained on ``template`` writes when it calls get_weather: the template's own rendering of an
    assistant tool call, after the generation prompt, up to the end of the turn."""
    user = [{"role": "user", "content": "What is the weather in Paris?"}]
    call = {"id": "call0abc1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    prompt = chat_template.render(template, user, tools=[WEATHER], **SPECIAL)
    full = chat_template.render(template, [*user, {"role": "assistant", "content": "", "tool_calls": [call]}],
                                tools=[WEATHER], add_generation_prompt=False, **SPECIAL)
    cut = len(os.path.commonprefix([prompt, full]))
    while cut > 0 and full[cut - 1] not in ">\n":  # not inside a marker the prompt and the reply share a part of
        cut -= 1
    return full[cut:]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_real_templates_format_is_detected(name):
    template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    assert toolcalls.detect_format(template) == EXPECTED[name]
    if name in NO_TOOLS_SECTION:
        with pytest.raises(ForgeError, match="no tools section"):
            toolcalls.check_template_sees_tools(template, [WEATHER], **SPECIAL)
    else:
        assert toolcalls.check_template_sees_tools(template, [WEATHER], **SPECIAL) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - NO_ROUND_TRIP))
def test_each_real_templates_tool_call_is_read_back(name):
    template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    fmt = toolcalls.detect_format(template)
    reply = rendered_call(template, {"city": "Paris", "days": 2})
    assert "get_weather" in reply, reply
    parsed = toolcalls.parse(reply, fmt)
    assert parsed.names() == ["get_weather"], (reply, parsed)
    call = parsed.tool_calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}, reply


@pytest.mark.parametrize("fmt,text,content,calls", [
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
               '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>', "Let me check.", [("a", {"x": 1}), ("b", {})]),
    ("hermes", "Plain answer, no call.", "Plain answer, no call.", []),
    ("mistral", '[TOOL_CALLS][{"name": "a", "arguments": {"x": "一"}, "id": "abcdefghi"}]', "", [("a", {"x": "一"})]),
    ("mistral", '[TOOL_CALLS]a[ARGS]{"x": 2}[TOOL_CALLS]b[ARGS]{}', "", [("a", {"x": 2}), ("b", {})]),
    ("llama3", '{"name": "a", "parameters": {"x": 1}}', "", [("a", {"x": 1})]),
    ("llama3", '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}', "",
     [("a", {"x": 1}), ("b", {})]),
    ("llama3", "Paris is sunny today.", "Paris is sunny today.", []),
    ("granite", '<|tool_call|>[{"arguments": {"x": 1}, "name": "a"}]', "", [("a", {"x": 1})]),
    ("harmony", '<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary '
                'to=functions.a <|constrain|>json<|message|>{"x": 1}', "", [("a", {"x": 1})]),
    ("harmony", "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>Hi!", "Hi!", []),
])
def test_parse_formats(fmt, text, content, calls):
    parsed = toolcalls.parse(text, fmt)
    assert parsed.content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls] == calls
    assert not parsed.errors


def test_a_broken_call_stays_text_and_says_why():
    text = '<tool_call>\n{"name": "a", "arguments": {"x": 1}\n</tool_call>'  # one brace short
    parsed = toolcalls.parse(text, "hermes")
    assert parsed.tool_calls == [] and parsed.content == text
    assert parsed.errors and "JSON" in parsed.errors[0]


def test_stream_holdback():
    assert toolcalls.holdback("Hello <tool", ["<tool_call>"]) == len("Hello ")
    assert toolcalls.holdback("Hello <tool_call>{", ["<tool_call>"]) == len("Hello ")
    assert toolcalls.holdback("Hello there", ["<tool_call>"]) == len("Hello there")


def test_template_without_tools_is_refused():
    smol = chat_template.named_template("chatml")
    with pytest.raises(ForgeError, match="no tools section"):
        toolcalls.check_template_sees_tools(smol, [WEATHER])


def test_messages_for_templates_get_argument_objects():
    msgs = toolcalls.template_messages([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}}]}])
    assert msgs[0]["content"] == "" and msgs[0]["tool_calls"][0]["function"]["arguments"] == {"x": 1}


@pytest.mark.parametrize("content,words", [
    ("not json", ["tools.json", "not JSON", "line 1"]),
    ("[]", ["tools.json", "non-empty list"]),
    ('[{"type": "function", "function": {"name": "bad name!"}}]', ["tools.json", "tool 1", "bad name!"]),
    ('[{"type": "retrieval"}]', ["tools.json", "tool 1", "retrieval"]),
    ('[{"name": "a"}, {"name": "a"}]', ["tools.json", "tool 2", "defined twice"]),
    ('[{"name": "a", "parameters": {"type": "string"}}]', ["tools.json", "tool 1", "parameters"]),
    ('[{"name": "a", "parameters": []}]', ["tools.json", "tool 1", "parameters"]),
])
def test_bad_tools_files_are_one_line_errors(tmp_path, content, words):
    f = tmp_path / "tools.json"
    f.write_text(content)
    with pytest.raises(ForgeError) as e:
        toolcalls.load_tools(f)
    for w in words:
        assert w in str(e.value)
    assert "\n" not in str(e.value)


def test_tools_file_shapes(tmp_path):
    f = tmp_path / "t.json"
    for value in ([WEATHER], {"tools": [WEATHER]}, WEATHER["function"], [WEATHER["function"]]):
        f.write_text(json.dumps(value))
        assert toolcalls.load_tools(f) == [WEATHER]


# -- with the tool fixture: SmolLM2 fine-tuned to call get_weather in its template's format --------------------


def tools_file(tmp_path) -> Path:
    f = tmp_path / "tools.json"
    f.write_text(json.dumps(adapters.TOOLS))
    return f


@pytest.mark.slow
def test_chat_shows_the_tool_call(tmp_path):
    model = adapters.tool_gguf()
    r = subprocess.run([*QUANTIZE, "chat", str(model), "--threads", "1", "--tools", str(tools_file(tmp_path))],
                       input=f"{adapters.TOOL_QUESTION}\nWhat is the capital of France?\n", capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    call = [ln for ln in lines if "tool call> " in ln]
    assert len(call) == 1, r.stdout
    name, _, args = call[0].split("tool call> ")[1].partition("(")
    assert name == "get_weather" and json.loads(args[:-1]) == {"city": "Paris"}
    assert "<tool_call>" not in r.stdout  # the markup is read, not shown
    # the call stays in the history as an assistant tool_calls message, and the chat goes on
    assert r.stdout.count("assistant> ") == 2 and "What is the capital of France?" in r.stdout


@pytest.mark.slow
def test_smoke_expect_tool(tmp_path):
    model = adapters.tool_gguf()
    tools = tools_file(tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": adapters.TOOL_QUESTION, "expect_tool": "get_weather"}) + "\n"
                       + json.dumps({"prompt": "What's the weather like in Tokyo?"}) + "\n")
    r = run("smoke", str(model), "--prompts", str(prompts), "--tools", str(tools), "--threads", "1", "--no-progress",
            "--expect-tool", "get_weather", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    [report] = json.loads(r.stdout)
    assert [p["checks"]["tool_call"] for p in report["prompts"]] == [True, True]
    calls = [p["tool_calls"][0]["function"] for p in report["prompts"]]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                        ("get_weather", {"city": "Tokyo"})]

    # a question the model answers in words: not a call of get_weather -> exit 1, named
    plain = tmp_path / "plain.txt"
    plain.write_text("What is the capital of France?\n")
    r = run("smoke", str(model), "--prompts", str(plain), "--tools", str(tools), "--expect-tool", "get_weather",
            "--threads", "1", "--no-progress")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL tool call:" in r.stdout and "not a call of get_weather" in r.stdout

    # the table shows the calls
    r = run("smoke", str(model), "--prompts", str(prompts), "--tools", str(tools), "--threads", "1", "--no-progress")
    assert r.returncode == 0 and "tool call> get_weather(" in r.stdout


@pytest.mark.slow
def test_tool_option_errors(tmp_path, converted):
    model = adapters.tool_gguf()
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    for cmd in ("chat", "smoke"):
        assert_user_error(run(cmd, str(model), "--tools", str(bad)), "bad.json", "not JSON")
        assert_user_error(run(cmd, str(model), "--tools", str(tmp_path / "none.json")), "none.json")
    assert_user_error(run("smoke", str(model), "--expect-tool", "get_weather"), "--expect-tool", "--tools")
    assert_user_error(run("smoke", str(model), "--tools", str(tools_file(tmp_path)), "--expect-tool", "nope"),
                      "nope", "get_weather")
    # SmolLM2's own template has no tools section: refused rather than tools silently never shown
    assert_user_error(run("chat", str(converted("smollm2", "q8_0")), "--tools", str(tools_file(tmp_path))),
                      "no tools section")
