"""Tools and thinking in the Ollama TEMPLATE (issue 13): for the real templates in tests/data/templates, the Go
TEMPLATE renders the tool suite (tool definitions, one and two calls, results, thinking on and off, earlier
reasoning) as the Jinja template does apart from whitespace inside JSON, with the real Go text/template; the
tool-call text starts with the tag Ollama's parser derives from the TEMPLATE; refused templates say why."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

import gorender
from gguf_forge import chat_template
from gguf_forge.errors import ForgeError
from gguf_forge.modelfiles import gotemplate, tools

translate = importlib.import_module("gguf_forge.modelfiles.translate").translate

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "data" / "templates"
LLAMA = ("<|begin_of_text|>", "<|eot_id|>")
R1 = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
# template file -> (bos, eos, status, why); the table the README states
STATUS = {
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>", "exact but JSON whitespace", ""),
    "Qwen-Qwen3-0.6B": ("", "<|im_end|>", "exact but JSON whitespace", ""),
    "Qwen3.5-4B": ("", "<|im_end|>", "exact but JSON whitespace", ""),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": ("<|begin_of_text|>", "<|im_end|>", "error", "NoneType"),
    "meta-llama-Llama-3.1-8B-Instruct": (*LLAMA, "exact but JSON whitespace", ""),
    "meta-llama-Llama-3.2-3B-Instruct": (*LLAMA, "error", "other than YYYY-MM-DD"),
    "meta-llama-Llama-3.3-70B-Instruct": (*LLAMA, "exact but JSON whitespace", ""),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>", "exact but JSON whitespace", ""),
    "HuggingFaceTB-SmolLM3-3B": ("", "<|im_end|>", "error", "cannot be reproduced exactly"),
    # Granite 3.3's default system prompt writes today's date as "%B %d, %Y": refused (the one date rule), unless
    # --system replaces that prompt or the date is fixed in a copy (below)
    "ibm-granite-granite-3.3-2B-Instruct": ("", "<|end_of_text|>", "error", "other than YYYY-MM-DD"),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": (*R1, "exact", ""),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": (*R1, "none", ""),
    # gpt-oss writes today's date as YYYY-MM-DD: {{ currentDate }} in the TEMPLATE; Harmony layout
    "openai-gpt-oss-120b": ("", "<|return|>", "exact but JSON whitespace", ""),
    # Mistral v0.3's tokenizer (v3, SentencePiece): the template Mistral's mistral-common 1.13.1 generates for it
    # (tests/data/templates/README.md); the system prompt goes into the last user turn even when replies or tool
    # results follow it, which the Mistral layout (system text only when the last user turn is the last message) does
    # not follow
    "mistral-common-1.13.1-v3-spm": ("<s>", "</s>", "refused", "'one tool call and its result'"),
}
# Llama 3.2 writes today's date (refused as such, as for plain chats); its copy with the date fixed translates
FIXED_DATE = "meta-llama-Llama-3.2-3B-Instruct (date fixed)"
STATUS[FIXED_DATE] = (*LLAMA, "exact but JSON whitespace", "")
# gpt-oss with a fixed date (no {{ currentDate }}): the same Harmony layout
GPT_OSS_FIXED = "openai-gpt-oss-120b (date fixed)"
STATUS[GPT_OSS_FIXED] = ("", "<|return|>", "exact but JSON whitespace", "")
GRANITE_FIXED = "ibm-granite-granite-3.3-2B-Instruct (date fixed)"
STATUS[GRANITE_FIXED] = ("", "<|end_of_text|>", "exact but JSON whitespace", "")
# Hermes 2 Pro ships two templates: "default" (plain ChatML) and "tool_use" (used when a request has tools, by
# transformers and llama.cpp; the TEMPLATE switches with {{ if .Tools }})
HERMES = "NousResearch-Hermes-2-Pro-Llama-3-8B (default + tool_use)"
STATUS[HERMES] = ("<|begin_of_text|>", "<|im_end|>", "exact but JSON whitespace", "")
TOOL_USE = {HERMES: "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use"}
EXACT = [n for n, v in STATUS.items() if v[2].startswith("exact")]
TAGS = {"Qwen-Qwen2.5-7B-Instruct": "<tool_call>", "Qwen-Qwen3-0.6B": "<tool_call>",
        "Qwen3.5-4B": "<tool_call>\n<function=", "mistralai-Mistral-Nemo-Instruct-2407": "[TOOL_CALLS][",
        "meta-llama-Llama-3.1-8B-Instruct": "{", "meta-llama-Llama-3.3-70B-Instruct": "{", FIXED_DATE: "{",
        HERMES: "<tool_call>"}


def source(name: str) -> str:
    if name == FIXED_DATE:
        text = (TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(encoding="utf-8")
        return text.replace('strftime_now("%d %b %Y")', '"26 Jul 2024"')
    if name == GPT_OSS_FIXED:
        text = (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(encoding="utf-8")
        return text.replace('strftime_now("%Y-%m-%d")', '"2026-12-02"')
    if name == GRANITE_FIXED:
        text = (TEMPLATES / "ibm-granite-granite-3.3-2B-Instruct.jinja").read_text(encoding="utf-8")
        return text.replace("strftime_now('%B %d, %Y')", '"December 02, 2026"')
    if name == HERMES:
        return (TEMPLATES / "NousResearch-Hermes-2-Pro-Llama-3-8B-default.jinja").read_text(encoding="utf-8")
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def go_bin(tmp_path_factory):
    return gorender.build(tmp_path_factory)


go_run = gorender.request


def tool_source(name: str) -> str | None:
    return source(TOOL_USE[name]) if name in TOOL_USE else None


def tr_for(name: str):
    bos, eos, _, _ = STATUS[name]
    return translate(source(name), bos=bos, eos=eos, tool_template=tool_source(name))


def go_conversations(cases: list[tools.Case]) -> list[dict]:
    return [{"messages": tools.ollama_messages(c.messages), "tools": c.tools, "think": c.think} for c in cases]


@pytest.mark.parametrize("name", sorted(STATUS))
def test_every_real_template_has_its_stated_status(name):
    bos, eos, status, why = STATUS[name]
    if status == "error":
        with pytest.raises(Exception, match=why):
            translate(source(name), bos=bos, eos=eos)
        return
    tr = tr_for(name)
    assert tr.tools == status, tr.tools_reason
    assert why in tr.tools_reason
    if status == "refused":
        # never half-right: no tools in the TEMPLATE, and the Modelfile says so
        assert ".Tools" not in tr.go_template and ".ToolCalls" not in tr.go_template
        assert any("tools and thinking are not in this TEMPLATE" in n for n in tr.notes)
    if status == "exact but JSON whitespace":
        assert ".Tools" in tr.go_template and any("whitespace inside JSON" in n for n in tr.notes)


@pytest.mark.parametrize("name", EXACT)
def test_tool_suite_renders_identically_in_real_go(go_bin, name):
    bos, eos, _, _ = STATUS[name]
    src = source(name)
    tr = tr_for(name)
    cases = tools.cases_for(tr.go_template)
    got = go_run(go_bin, {"template": tr.go_template, "system": tr.system or "", "conversations":
                          go_conversations(cases)})
    wants = []
    for case in cases:
        try:
            w = tools.jinja_render(src, case, bos, eos, tr.system, tool_source(name))
        except ForgeError:
            w = None  # the template refuses it (Llama 3.1-3.3: one call per turn): so must the Go template
        wants.append(w[len(bos):] if w and bos and w.startswith(bos) else w)
    for case, go_out, want in zip(cases, got, wants):
        if want is None:
            assert go_out.startswith("\x00template error"), case.name
            with pytest.raises(gotemplate.GoTemplateError):
                tools.go_render(tr.go_template, case, tr.system)
            continue
        same, _ = tools.same_but_json_whitespace(want, go_out)
        assert same, (case.name, tools.first_difference(want, go_out))
        # the interpreter the proof runs on agrees with Go byte for byte
        assert tools.go_render(tr.go_template, case, tr.system) == go_out, case.name
    # "exact but JSON whitespace" really has such a difference; "exact" has none
    assert (wants != got) == (STATUS[name][2] == "exact but JSON whitespace")


def test_a_difference_outside_json_is_refused_naming_the_conversation():
    src = source("Qwen-Qwen3-0.6B")
    tr = translate(src, bos="", eos="<|im_end|>")
    broken = tr.go_template.replace("<tool_response>", "<tool_result>")
    _, problem = tools.verify(src, broken, "", "<|im_end|>", True, tr.system)
    assert "'one tool call and its result'" in problem and "<tool_result>" in problem
    _, problem = tools.verify(src, tr.go_template.replace("<think>", "<thinking>"), "", "<|im_end|>", True, None)
    assert "thinking" in problem


def test_json_whitespace_comparison_is_strict():
    assert tools.same_but_json_whitespace('a {"x": [1, 2]} b', 'a {"x":[1,2]} b') == (True, True)
    assert tools.same_but_json_whitespace('a {"x": 1} b', 'a {"x":2} b')[0] is False
    assert tools.same_but_json_whitespace('a {"x": 1, "y": 2}', 'a {"y":2,"x":1}')[0] is False  # key order
    assert tools.same_but_json_whitespace('a {"x": "<"}', 'a {"x":"\\u003c"}')[0] is False  # Go's HTML escape
    assert tools.same_but_json_whitespace("a  b", "a b")[0] is False  # whitespace outside JSON


@pytest.mark.parametrize("name", sorted(TAGS))
def test_tool_call_reply_is_recognised_by_the_tag_ollama_derives(go_bin, name):
    bos, eos, _, _ = STATUS[name]
    tr = tr_for(name)
    src = tool_source(name) or source(name)
    tag = go_run(go_bin, {"template": tr.go_template, "tag": True})["tag"]
    assert tag == gotemplate.tool_call_tag(tr.go_template) == TAGS[name]
    # what a model trained on the template emits for a call: the Jinja rendering of an assistant tool-call turn
    ask = {"role": "user", "content": "Weather and time in Paris?"}
    calls = [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00001"},
             {"name": "get_time", "arguments": {"timezone": "Europe/Paris"}, "id": "call00002"}]
    if "single tool-calls" in src:
        calls = calls[:1]  # Llama 3.1-3.3: one call per turn
    convo = tools.jinja_messages([ask, {"role": "assistant", "content": "", "calls": calls}])
    prompt = chat_template.render(src, convo[:1], add_generation_prompt=True, tools=tools.TOOLS, bos_token=bos)
    full = chat_template.render(src, convo, add_generation_prompt=False, tools=tools.TOOLS, bos_token=bos)
    assert full.startswith(prompt.rstrip("\n"))
    reply = full[len(prompt):] if full.startswith(prompt) else full[len(prompt.rstrip("\n")):]
    reply = reply.split(eos)[0]
    if "</think>" in reply:
        reply = reply.split("</think>", 1)[1]
    assert reply.lstrip().startswith(tag), reply[:40]
    # Ollama's parser: after each tag, a JSON object with the name of a known tool and its arguments
    found = []
    if "<function=" in tag:
        # arguments one by one (Qwen3.5): the tag and the name are found; the arguments are not JSON, so Ollama's
        # TEMPLATE-derived parser cannot read them (the Modelfile says so and names Ollama's own parser)
        assert any("not as JSON" in n for n in tr.notes)
        for chunk in reply.split(tag)[1:]:
            name, _, body = chunk.partition(">")
            args = dict(re.findall(r"<parameter=([^>]+)>\n(.*?)\n</parameter>", body, re.S))
            found.append((name, args))
        assert found == [(c["name"], c["arguments"]) for c in calls]
        return
    if tag.endswith("["):  # Mistral: one JSON list of calls after the tag
        listed, _ = json.JSONDecoder().raw_decode("[" + reply.split(tag, 1)[1])
        found = [(c["name"], c["arguments"]) for c in listed]
        assert found == [(c["name"], c["arguments"]) for c in calls]
        return
    chunks = reply.split(tag)[1:] if tag != "{" else [reply.lstrip()[1:]]
    for chunk in chunks:
        chunk = chunk.lstrip() if tag != "{" else "{" + chunk
        obj, _ = json.JSONDecoder().raw_decode(chunk)
        found.append((obj["name"], obj.get("arguments", obj.get("parameters"))))
    assert found == [(c["name"], c["arguments"]) for c in calls]


@pytest.mark.parametrize("name", ["Qwen-Qwen3-0.6B", "Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct",
                                  "mistralai-Mistral-Nemo-Instruct-2407"])
def test_render_matches_transformers_with_tools_and_thinking(name):
    from transformers.utils.chat_template_utils import render_jinja_template

    bos, eos, _, _ = STATUS[name]
    src = source(name)
    for case in tools.tool_suite():
        msgs = tools.jinja_messages(case.messages)
        extra = {} if case.think is None else {"enable_thinking": case.think}
        try:
            ours = chat_template.render(src, msgs, bos_token=bos, eos_token=eos, tools=case.tools, **extra)
        except Exception:  # noqa: BLE001 - both refuse (Llama: one call per turn; Mistral: ids of 9 characters)
            with pytest.raises(Exception):
                render_jinja_template(conversations=[msgs], chat_template=src, tools=case.tools,
                                      add_generation_prompt=True, bos_token=bos, eos_token=eos, **extra)
            continue
        theirs = render_jinja_template(conversations=[msgs], chat_template=src, tools=case.tools,
                                       add_generation_prompt=True, bos_token=bos, eos_token=eos, **extra)[0][0]
        assert ours == theirs, case.name


def test_go_json_matches_go_for_tools(go_bin):
    tpl = "{{ range .Tools }}{{ . }}|{{ json .Function.Parameters.Properties }}\n{{ end }}" \
          "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }}{{ range $k, $v := " \
          ".Function.Arguments }}{{ $k }}={{ $v }};{{ end }}{{ end }}{{ end }}"
    case = tools.Case("x", [{"role": "user", "content": "a<b & c"}, {"role": "assistant", "content": "", "calls": [
        {"name": "f", "arguments": {"z": 1, "a": "x<y", "m": [1.5, True, None], "n": {"b": 2, "a": 1e21}},
         "id": "c"}]}], tools.TOOLS)
    got = go_run(go_bin, {"template": tpl, "conversations": go_conversations([case])})[0]
    assert tools.go_render(tpl, case, None) == got


# -- the written files: Modelfile comment, model.yaml against LM Studio's schema ------------------------------------
def _hf_with(folder: Path, name: str) -> Path:
    bos, eos, _, _ = STATUS[name]
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": source(name), "bos_token": bos,
                                                              "eos_token": eos}))
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 40960}))
    return folder


def test_modelfile_and_model_yaml_for_a_tool_template(tmp_path):
    import yaml

    from gguf_forge.modelfiles import write_modelfile
    from test_modelfile import parse_modelfile, validate_presets

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    res = write_modelfile(_hf_with(tmp_path / "hf", "Qwen-Qwen3-0.6B"), tmp_path / "out", gguf=tmp_path / "m.gguf",
                          ctx=4096, name="Qwen3-Test")
    assert res.tools == "exact but JSON whitespace"
    mf = parse_modelfile(res.modelfile.read_text())
    assert ".Tools" in mf["template"] and ".ToolCalls" in mf["template"] and ".Thinking" in mf["template"]
    assert any("whitespace inside JSON" in c for c in mf["comments"])
    definition = yaml.safe_load(res.model_yaml.read_text())
    assert definition["model"] == "local/Qwen3-Test" and definition["metadataOverrides"]["trainedForToolUse"] is True
    assert definition["customFields"][0]["effects"] == [{"type": "setJinjaVariable", "variable": "enable_thinking"}]
    as_json = tmp_path / "model.json"
    as_json.write_text(json.dumps(definition))
    r = validate_presets([as_json])
    assert r.returncode == 0, r.stdout + r.stderr
    # the check can fail: a base without sources, a bad field value
    bad = json.loads(as_json.read_text())
    del bad["base"][0]["sources"]
    bad["config"]["load"]["fields"][0]["value"] = "lots"
    as_json.write_text(json.dumps(bad))
    r = validate_presets([as_json])
    assert r.returncode == 1 and "sources" in r.stdout and "llm.load.contextLength" in r.stdout


THINKING = {"Qwen-Qwen3-0.6B": ("<think>", "</think>"), "Qwen3.5-4B": ("<think>", "</think>"), "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("<think>", "</think>"),
            "Qwen-Qwen2.5-7B-Instruct": ("", ""), "meta-llama-Llama-3.1-8B-Instruct": ("", "")}


@pytest.mark.parametrize("name", sorted(THINKING))
def test_ollama_sees_thinking_support_and_its_tags(go_bin, name):
    """Ollama decides that a TEMPLATE supports thinking, and which tags split reasoning from the answer, from the
    text around .Thinking (its InferTags); a template without thinking shows none."""
    bos, eos, _, _ = STATUS[name]
    tr = translate(source(name), bos=bos, eos=eos)
    got = go_run(go_bin, {"template": tr.go_template, "thinking_tags": True})
    assert (got["open"], got["close"]) == gotemplate.thinking_tags(tr.go_template) == THINKING[name]


@pytest.mark.parametrize("field", ["reasoning_content", "thinking", "reasoning"])
@pytest.mark.parametrize("name", ["Qwen-Qwen3-0.6B", "Qwen3.5-4B", "openai-gpt-oss-120b"])
def test_reasoning_under_any_name_renders_as_transformers(name, field):
    """transformers passes a message's reasoning to the template under both names templates read; so does
    chat_template.render (Qwen3 reads reasoning_content, gpt-oss thinking)."""
    from datetime import datetime

    from transformers.utils.chat_template_utils import render_jinja_template

    src = source(name)
    msgs = [{"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "It is 4.", field: "Two plus two is four."}]
    today = datetime(2026, 12, 2)
    ours = chat_template.render(src, msgs, add_generation_prompt=False, today=today)
    theirs = render_jinja_template(conversations=[msgs], chat_template=src, add_generation_prompt=False)[0][0]
    if "strftime_now" in src:  # the date line: same template, today's date on both sides
        theirs_date = datetime.now().strftime("%Y-%m-%d")
        ours = ours.replace(today.strftime("%Y-%m-%d"), theirs_date)
    assert ours == theirs
    assert "Two plus two is four." in ours
    assert msgs[1].get("reasoning_content") is None or field == "reasoning_content"  # the caller's dict untouched


def test_a_tool_difference_is_refused_naming_the_conversation(tmp_path):
    """A template whose thinking prompt changes with tools (something no layout expresses): by default the TEMPLATE
    is written without tools, with the reason; with --require-tools it is exit 2 naming the conversation, nothing
    written."""
    from helpers import assert_user_error, run

    src = source("Qwen-Qwen3-0.6B") + ("{%- if tools and enable_thinking is defined and enable_thinking %}"
                                       "{{- '<think>\\n' }}{%- endif %}")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": src, "eos_token": "<|im_end|>"}))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    r = run("modelfile", str(hf), "--gguf", str(tmp_path / "m.gguf"), "-o", str(tmp_path / "strict"),
            "--require-tools")
    assert_user_error(r, "--require-tools", "'thinking on with tools'")
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())
    r = run("modelfile", str(hf), "--gguf", str(tmp_path / "m.gguf"), "-o", str(tmp_path / "out"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tools"] == "refused" and "'thinking on with tools'" in r.stderr
    text = (tmp_path / "out" / "Modelfile").read_text()
    assert ".Tools" not in text and "tools and thinking are not in this TEMPLATE" in text


def test_hermes_tool_use_writes_every_parameter_type_as_the_template_does(go_bin):
    """The tool_use template turns each parameter's JSON type into a Python name with its own macro (str, float, int,
    bool, dict, and list[Union[]] for any array); the TEMPLATE writes the names the macro gave on the probes, in the
    real Go too; a tool without parameters; a type Ollama's data cannot carry the same way (a list of types) is an
    execution error (the request fails), never a different prompt."""
    bos, eos, _, _ = STATUS[HERMES]
    tr = tr_for(HERMES)
    props = {"a_num": {"type": "number", "description": "A number."},
             "b_int": {"type": "integer", "description": "A count."},
             "c_flag": {"type": "boolean", "description": "A flag."},
             "d_obj": {"type": "object", "description": "An object."},
             "e_list": {"type": "array", "items": {"type": "string"}, "description": "Some strings."},
             "f_text": {"type": "string", "description": "A text."}}
    typed = [{"type": "function", "function": {"name": "typed", "description": "Every type.", "parameters": {
        "type": "object", "required": ["a_num"], "properties": props}}},
             {"type": "function", "function": {"name": "ping", "description": "No parameters.", "parameters": {
                 "type": "object", "properties": {}}}}]
    union = [{"type": "function", "function": {"name": "u", "description": "Union.", "parameters": {
        "type": "object", "required": ["x"], "properties": {"x": {"type": ["string", "null"], "description": "X."}}}}}]
    ask = {"role": "user", "content": "Hi"}
    cases = [tools.Case("typed", [ask], typed), tools.Case("union", [ask], union)]
    got = go_run(go_bin, {"template": tr.go_template, "system": "", "conversations": go_conversations(cases)})
    want = tools.jinja_render(source(HERMES), cases[0], bos, eos, None, tool_source(HERMES))[len(bos):]
    assert "a_num(float)" in want and "e_list(list[Union[]])" in want and '"parameters": {}}' in want
    assert tools.same_but_json_whitespace(want, got[0])[0], tools.first_difference(want, got[0])
    assert tools.go_render(tr.go_template, cases[0], None) == got[0]
    assert got[1].startswith("\x00template error")
    with pytest.raises(gotemplate.GoTemplateError):
        tools.go_render(tr.go_template, cases[1], None)


def test_a_folder_with_default_and_tool_use_templates_gets_both_in_its_modelfile(tmp_path):
    """tokenizer_config.json's named templates: the default one for plain chats, tool_use for requests with tools."""
    from gguf_forge.modelfiles import write_modelfile

    bos, eos, _, _ = STATUS[HERMES]
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "default", "template": source(HERMES)}, {"name": "tool_use", "template": tool_source(HERMES)}],
        "bos_token": bos, "eos_token": eos}))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    res = write_modelfile(hf, tmp_path / "out", gguf=tmp_path / "m.gguf", ctx=4096, name="Hermes-Test")
    assert res.tools == "exact but JSON whitespace"
    text = res.modelfile.read_text()
    assert "{{- if .Tools }}" in text and "You are a function calling AI model." in text
    # a --template given by the user replaces both
    res = write_modelfile(hf, tmp_path / "out2", gguf=tmp_path / "m.gguf", ctx=4096, name="Hermes-Test",
                          template=str(TEMPLATES / "NousResearch-Hermes-2-Pro-Llama-3-8B-default.jinja"))
    assert res.tools == "none" and ".Tools" not in res.modelfile.read_text()


@pytest.mark.parametrize("name", sorted(TAGS))
def test_the_tag_ollama_derives_starts_with_the_marker_the_tool_call_parser_uses(name):
    """One table of tool-call markers (modelfiles.markers) serves the TEMPLATE and the reply parser (chat, smoke,
    serve): the tag Ollama derives from the TEMPLATE starts with the marker of the format the parser reads."""
    from gguf_forge.modelfiles import markers
    from gguf_forge.tools.chat import toolcalls

    src = tool_source(name) or source(name)
    fmt = toolcalls.detect_format(src)
    assert fmt is not None and fmt == markers.detect_format(src)
    assert markers.starts_with_marker(gotemplate.tool_call_tag(tr_for(name).go_template), fmt)


def test_a_template_whose_tag_is_not_the_models_marker_is_refused():
    src = source("Qwen-Qwen2.5-7B-Instruct")
    tr = translate(src, bos="", eos="<|im_end|>")
    assert tools._marker_problem(src, tr.go_template) == ""
    assert "<tool_call>" in tools._marker_problem(src, tr.go_template.replace("<tool_call>", "<call>"))


def test_granite_tool_calls_are_recognised_by_the_marker_its_template_does_not_render(go_bin):
    """Granite 3.3 writes the tool list as one JSON value in an available_tools turn and does not write earlier
    calls at all; its system prompt tells the model to answer "<|tool_call|> followed by a JSON list". The
    TEMPLATE renders nothing for calls either, but carries that marker where Ollama looks for the tag."""
    from gguf_forge.tools.chat import toolcalls

    name = GRANITE_FIXED
    tr = tr_for(name)
    assert go_run(go_bin, {"template": tr.go_template, "tag": True})["tag"] == "<|tool_call|>"
    assert "respond only with <|tool_call|> followed by a JSON list" in source(name)
    reply = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    parsed = toolcalls.parse(reply, toolcalls.detect_format(source(name)))
    assert parsed.names() == ["get_weather"] and json.loads(parsed.tool_calls[0]["function"]["arguments"]) == {
        "city": "Paris"}


def test_a_gguf_with_only_the_default_template_gets_the_folders_tool_use_template(tmp_path):
    """The pipeline writes the Modelfile from the GGUF (whose converter keeps only the default template) with the
    HF folder as source: the folder's tool_use template is used when its default one is the GGUF's."""
    import gguf

    from gguf_forge.modelfiles import write_modelfile

    bos, eos, _, _ = STATUS[HERMES]
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "default", "template": source(HERMES)}, {"name": "tool_use", "template": tool_source(HERMES)}],
        "bos_token": bos, "eos_token": eos}))
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", bos, eos])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(source(HERMES))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    res = write_modelfile(path, tmp_path / "out", source_dir=hf, ctx=4096, name="Hermes-Test")
    assert res.tools == "exact but JSON whitespace" and "{{- if .Tools }}" in res.modelfile.read_text()
    # another default template in the folder: its tool_use template is not taken
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "default", "template": source(HERMES) + " "}, {"name": "tool_use", "template": tool_source(HERMES)}],
        "bos_token": bos, "eos_token": eos}))
    res = write_modelfile(path, tmp_path / "out2", source_dir=hf, ctx=4096, name="Hermes-Test")
    assert res.tools == "none"


# -- Harmony (gpt-oss) and today's date -------------------------------------------------------------------------------
GPT_OSS = "openai-gpt-oss-120b"


def test_harmony_template_is_the_models_format_with_ollamas_data(go_bin):
    """gpt-oss: the TEMPLATE writes the TypeScript tool namespace (recursive defines over Ollama's parameter types),
    analysis/final/commentary channels, to=functions calls, results named by the previous call, the reasoning effort
    from think, and today's date with {{ currentDate }}; real Go renders the Harmony cases (incl. nested types,
    effort levels, a reply after a call) as Jinja does today, apart from JSON whitespace."""
    from datetime import date

    tr = tr_for(GPT_OSS)
    assert tr.tools == "exact but JSON whitespace" and tr.writes_date and tr.manual is None
    tpl = tr.go_template
    assert "{{ currentDate }}" in tpl and "Zq8" not in tpl and tools.HARMONY_MARK in tpl
    # Ollama picks its built-in harmony parser for a gpt-oss GGUF whose TEMPLATE has these tags (shouldUseHarmony)
    assert "<|start|>" in tpl and "<|end|>" in tpl and any("harmony parser" in n for n in tr.notes)
    assert any("currentDate" in n for n in tr.notes)
    # stops: the end of a final reply and of a call, never the markers between a reply's channels
    assert tr.stops == ["<|return|>", "<|call|>"]
    trained = chat_template.render(source(GPT_OSS), [{"role": "user", "content": "Hi"}, {
        "role": "assistant", "content": "Hello!", "thinking": "Greet back."}], add_generation_prompt=False)
    reply = trained.split("<|start|>assistant", 1)[1]  # analysis, then the final message (training layout)
    assert "<|channel|>analysis" in reply and all(reply.find(x) in (-1, len(reply) - len(x)) for x in tr.stops)
    cases = tools.cases_for(tpl)
    assert {c.name for c in cases} >= {"nested parameter types", "reasoning effort low"}
    got = go_run(go_bin, {"template": tpl, "conversations": go_conversations(cases)})
    by_name = dict(zip((c.name for c in cases), got))
    today = date.today().isoformat()
    assert f"Current date: {today}\n" in by_name["thinking on"]
    assert "Reasoning: low" in by_name["reasoning effort low"] and "Reasoning: medium" in by_name["thinking on"]
    assert "Reasoning: medium" in by_name["thinking off"]  # gpt-oss cannot turn reasoning off: the default
    nested = by_name["nested parameter types"]
    assert "budget?: {\namount: \n                number, currency?: \n                \"EUR\" | \"USD\"" in nested
    assert "tags?: number[][],\n" in nested and "mode?: string | null,\n" in nested and "when?: any,\n" in nested
    # a call's reasoning is kept until a reply follows it; results name the previous call
    after = by_name["a call, its result, a reply with reasoning and a new question"]
    assert "I need the weather tool." not in after and "Report it." not in after
    assert "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>" in after
    assert "<|channel|>analysis<|message|>I need the weather tool.<|end|>" in by_name[
        "reasoning before a tool call, thinking on"]
    # two calls in one message: the template writes the first only, so does the TEMPLATE
    two = by_name["two tool calls and two results in a row"]
    assert "to=functions.get_time" not in two and two.count("<|start|>functions.get_weather to=") == 2
    # a result without an earlier call: the template raises, the TEMPLATE fails the request
    assert by_name["a tool result after a reply"].startswith("\x00template error")


def test_harmony_array_of_objects_is_measured_or_fails_the_request(go_bin):
    """The macro writes an array of objects as its type text + "[]", or "any[]" when that text is longer than 50
    characters: the TEMPLATE builds the text in a variable to measure it (scalar properties; "nested parameter types"
    has both outcomes); with a nested type it cannot, and fails such a request (as Ollama would answer it) in Go and
    in the checker, never renders another prompt."""
    tr = tr_for(GPT_OSS)
    nested = dict(zip((c.name for c in tools.harmony_cases()), go_run(go_bin, {
        "template": tr.go_template, "conversations": go_conversations(tools.harmony_cases())})))[
        "nested parameter types"]
    assert "legs?: {\nto: \n                string}[],\n" in nested and "lines?: any[],\n" in nested
    tool = {"type": "function", "function": {"name": "order", "description": "Order items.", "parameters": {
        "type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {
            "type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}}}}}}}
    case = tools.Case("array of objects", [{"role": "user", "content": "Buy"}], [tool])
    got = go_run(go_bin, {"template": tr.go_template, "conversations": go_conversations([case])})[0]
    assert got.startswith("\x00template error") and "cannot measure" in got
    with pytest.raises(gotemplate.GoTemplateError):
        tools.go_render(tr.go_template, case, None)
    assert "items: {\na?: \n                string[]}[]" in tools.jinja_render(
        source(GPT_OSS), case, "", "<|return|>", None)
    # with such a property, a text over 50 characters is still known to be "any[]"
    tool["function"]["parameters"]["properties"]["items"]["items"]["properties"]["a_long_property_name"] = {
        "type": "string"}
    case = tools.Case("array of objects, long", [{"role": "user", "content": "Buy"}], [tool])
    got = go_run(go_bin, {"template": tr.go_template, "conversations": go_conversations([case])})[0]
    want = tools.jinja_render(source(GPT_OSS), case, "", "<|return|>", None)
    assert "items: any[]" in want and got == want == tools.go_render(tr.go_template, case, None)


def test_a_harmony_template_that_changes_a_piece_is_refused():
    """The layout's pieces are cut from the template's own output: a variant writing results unquoted is refused
    with the reason, not written half-right."""
    src = source(GPT_OSS).replace("message.content|tojson", "message.content")
    tr = translate(src, bos="", eos="<|return|>")
    assert tr.tools == "refused" and "JSON string" in tr.tools_reason and ".Tools" not in tr.go_template
    with pytest.raises(ForgeError, match="require-tools"):
        translate(src, bos="", eos="<|return|>", require_tools=True)


def test_todays_date_is_one_rule_for_every_template():
    """YYYY-MM-DD (gpt-oss) becomes {{ currentDate }}, proven on one day: Jinja with that day as today and the
    TEMPLATE with currentDate on that day render the same; "%d %b %Y" (Llama 3.2) and a date in the default system
    prompt (Granite 3.3) are refused with the fix, and Granite translates once --system replaces that prompt."""
    from datetime import date, datetime

    from gguf_forge.modelfiles.translate import DATE_PROBE_TEXT

    tr = tr_for(GPT_OSS)
    day = datetime(2031, 5, 6)
    case = tools.harmony_cases()[0]
    with chat_template.fixed_today(day):
        want = tools.jinja_render(source(GPT_OSS), case, "", "<|return|>", None)
    got = gotemplate.render(tr.go_template, gotemplate.ollama_data(tools.ollama_messages(case.messages), case.tools),
                            today=date(2031, 5, 6))
    assert "Current date: 2031-05-06" in got and tools.same_but_json_whitespace(want, got)[0]
    assert DATE_PROBE_TEXT not in tr.go_template
    with pytest.raises(ForgeError, match="other than YYYY-MM-DD.*--template") as e:
        translate(source("meta-llama-Llama-3.2-3B-Instruct"), bos=LLAMA[0], eos=LLAMA[1])
    assert "--system" not in str(e.value)
    granite = source("ibm-granite-granite-3.3-2B-Instruct")
    with pytest.raises(ForgeError, match="default system prompt.*--system"):
        translate(granite, bos="", eos="<|end_of_text|>")
    tr = translate(granite, bos="", eos="<|end_of_text|>", system="You are Granite, developed by IBM.")
    assert tr.tools == "exact but JSON whitespace" and tr.system == "You are Granite, developed by IBM."
    # Ollama sends SYSTEM first when a request has no system message, so no prompt carries a date (the TEMPLATE's
    # branch for a conversation without one, the template's own default turn, is never reached with SYSTEM set)
    assert not tr.writes_date
    for case in tools.tool_suite():
        assert "Today's Date" not in tools.go_render(tr.go_template, case, tr.system), case.name
