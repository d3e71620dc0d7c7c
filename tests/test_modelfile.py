"""`quantize modelfile`: the Modelfile's TEMPLATE, run by Go's text/template on the data Ollama builds, renders
byte for byte what transformers renders from the model's Jinja template; LM Studio presets concatenate to the
same string and pass LM Studio's own schemas; stop strings end every reply and occur in none."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import gorender
from gguf_forge.chat_template import load as load_template
from gguf_forge.chat_template import named_templates
from gguf_forge.modelfiles import write_modelfile
from gguf_forge.modelfiles.ollama import modelfile_text
from gguf_forge.modelfiles.translate import translate

from helpers import assert_user_error, run

HERE = Path(__file__).resolve().parent

# the acceptance suite (issue 5): contents without surrounding whitespace except where noted
SUITE = {
    "one user turn": [("user", "Hello!")],
    "system + user": [("system", "You are a pirate."), ("user", "Who are you?")],
    "three turns": [("user", "What is 2+2?"), ("assistant", "It is 4."), ("user", "And 3+3?")],
    "three turns with system": [("system", "Answer in one word."), ("user", "Capital of France?"),
                                ("assistant", "Paris."), ("user", "Of Japan?")],
    "Chinese and emoji": [("system", "你是一个乐于助人的助手。"), ("user", "你是谁？🤖"),
                          ("assistant", "我是一个AI助手 😊，很高兴认识你。"), ("user", "讲个笑话吧 🎉")],
    "braces and special-token-like text": [("user", "Print {{ .Content }} and }} {{ please; ignore <|eot_id|>."),
                                           ("assistant", "Done: {{x}} and }}."), ("user", "What about <|im_end|>?")],
    "trailing newlines": [("user", "line one\n\n"), ("assistant", "ok\n"), ("user", "line two\n\n\n")],
}
FAMILY_TOKENS = {"llama3": ("<|begin_of_text|>", "<|eot_id|>"), "firefly-llama3": ("<|begin_of_text|>", "<|end_of_text|>"),
                 "gemma": ("<bos>", "<eos>"), "chatml": ("", "<|im_end|>"), "mistral": ("<s>", "</s>"),
                 "llama2": ("<s>", "</s>"), "phi3": ("<s>", "<|endoftext|>"), "zephyr": ("<s>", "</s>")}
COMMON_WORDS = {"user", "assistant", "system", "the", "a", "end", "stop", "model", "human", "ai"}


def conversations(trims: bool) -> dict[str, list[dict[str, str]]]:
    return {name: [{"role": r, "content": c.strip() if trims else c} for r, c in msgs] for name, msgs in SUITE.items()}


def replies(trims: bool) -> list[str]:
    return [m["content"] for msgs in conversations(trims).values() for m in msgs if m["role"] == "assistant"]


# -- reading a Modelfile the way Ollama's parser does -------------------------------------------------------------
def parse_modelfile(text: str) -> dict:
    """FROM, TEMPLATE, SYSTEM, LICENSE, stops and parameters, values unquoted as Ollama's parser does."""
    out: dict = {"stop": [], "params": {}, "comments": []}
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t\r\n":
            i += 1
            continue
        if text[i] == "#":
            end = text.find("\n", i)
            end = n if end < 0 else end
            out["comments"].append(text[i + 1:end].strip())
            i = end
            continue
        j = i
        while j < n and text[j].isalpha():
            j += 1
        cmd = text[i:j].lower()
        j += 1
        if cmd == "parameter":
            k = j
            while text[k] not in " \t":
                k += 1
            pname, j = text[j:k], k + 1
        if text.startswith('"""', j):
            end = text.index('"""', j + 3)
            value, i = text[j + 3:end], end + 3
        elif text.startswith('"', j):
            end = text.index('"', j + 1)
            value, i = text[j + 1:end], end + 1
        else:
            end = text.find("\n", j)
            end = n if end < 0 else end
            value, i = text[j:end].strip(), end
        # Ollama keeps only printable runes (and the whitespace it parses); we must never rely on the others
        assert all(ch.isprintable() or ch in "\n\t\r" for ch in value), repr(value)
        if cmd == "parameter":
            if pname == "stop":
                out["stop"].append(value)
            else:
                out["params"][pname] = value
        else:
            out[cmd] = value
    return out


# -- the real Go text/template --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    binary = gorender.build(tmp_path_factory)

    def render(template: str, system: str | None, convs: list[list[dict[str, str]]]) -> list[str]:
        return gorender.request(binary, {"template": template, "system": system or "", "conversations": convs})

    return render


def jinja_render(template: str, msgs: list[dict[str, str]], bos: str, eos: str, strip: bool = True) -> str:
    """transformers' chat-template rendering with the generation prompt, leading BOS stripped when the model's
    tokenizer adds BOS (``strip``): Ollama then adds it itself."""
    from transformers.utils.chat_template_utils import render_jinja_template

    out = render_jinja_template(conversations=[msgs], chat_template=template, add_generation_prompt=True,
                                bos_token=bos, eos_token=eos)[0][0]
    return out[len(bos):] if strip and bos and out.startswith(bos) else out


def expected(template: str, msgs: list[dict[str, str]], system: str | None, bos: str, eos: str,
             strip: bool = True) -> str:
    """What the model sees in Ollama/LM Studio: their system prompt goes first when the request has none."""
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}, *msgs]
    return jinja_render(template, msgs, bos, eos, strip)


def check_equivalence(go_render, template: str, modelfile: dict, bos: str, eos: str, strip: bool = True) -> None:
    trims = any("trims whitespace" in c for c in modelfile["comments"])
    convs = conversations(trims)
    system = modelfile.get("system")
    got = go_render(modelfile["template"], system, list(convs.values()))
    for (name, msgs), go_out in zip(convs.items(), got):
        assert go_out == expected(template, msgs, system, bos, eos, strip), name
    if system is not None and "SYSTEM is the chat template's own default" in "\n".join(modelfile["comments"]):
        # the default system prompt is the template's own: Jinja without a system message renders the same
        one = convs["one user turn"]
        assert jinja_render(template, one, bos, eos, strip) == expected(template, one, system, bos, eos, strip)


def check_stops(template: str, stops: list[str], bos: str, eos: str, trims: bool) -> None:
    reply = "It is 4."
    msgs = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": reply},
            {"role": "user", "content": "And 3+3?"}]
    rendered = jinja_render(template, msgs, bos, eos)
    after = rendered[rendered.index(reply) + len(reply):].lstrip(" \n")
    assert any(after.startswith(s) for s in stops), (after[:40], stops)  # what ends the reply is a stop string
    for s in stops:
        assert s.strip() and s.strip().lower() not in COMMON_WORDS and not s.strip().isalnum(), s
        assert not any(s in r for r in replies(trims)), s


# -- every named template -------------------------------------------------------------------------------------------
def test_named_templates_listed():
    assert {"llama3", "chatml", "gemma", "mistral", "llama2", "phi3", "zephyr", "firefly-llama3"} <= set(named_templates())


@pytest.mark.parametrize("name", sorted(FAMILY_TOKENS))
def test_named_template_renders_identically_in_go(go_render, name):
    bos, eos = FAMILY_TOKENS[name]
    template = load_template(name)
    tr = translate(template, bos=bos, eos=eos, extra_stop_tokens=[eos])
    text = modelfile_text(name=name, from_path="./m.gguf", template=tr.go_template, system=tr.system, stops=tr.stops,
                          parameters={"num_ctx": 4096}, license=None,
                          notes=["the original chat template trims whitespace"] if tr.trims else [])
    mf = parse_modelfile(text)
    check_equivalence(go_render, template, mf, bos, eos)
    check_stops(template, mf["stop"], bos, eos, tr.trims)
    assert (name in ("llama3", "gemma")) == tr.trims  # the two families whose templates trim contents


def test_firefly_template_is_the_seed_format():
    tpl = load_template("firefly-llama3")
    out = jinja_render(tpl, [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                             {"role": "user", "content": "再见"}], "", "")
    default = ("You are a helpful, excellent and smart assistant. Please respond to the user using the language they "
               "input, ensuring the language is elegant and fluent.If you don't know the answer to a question, please "
               "don't share false information.")
    assert out == (f"<|begin_of_text|><<SYS>>\n{default}\n<</SYS>>\n\n<|start_header_id|>user<|end_header_id|>\n\n你好"
                   "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n你好！<|end_of_text|>\n"
                   "<|start_header_id|>user<|end_header_id|>\n\n再见<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")
    tr = translate(tpl, bos="<|begin_of_text|>", eos="<|end_of_text|>")
    assert tr.system == default and "<|end_of_text|>" in tr.stops


# -- the fixture models' own templates (Modelfile written from the HF folder) ---------------------------------------
def hf_tokens(folder: Path) -> tuple[str, str, str, bool]:
    """Template, BOS and EOS texts, and whether the tokenizer adds BOS itself (then Ollama does too)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    adds_bos = tok.bos_token_id is not None and tok("a").input_ids[:1] == [tok.bos_token_id]
    return tok.chat_template, tok.bos_token or "", tok.eos_token or "", adds_bos


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["smollm2", "llama3", "qwen2", "qwen3", "gemma3", "gemma2", "spm_llama"])
def test_fixture_template_renders_identically(go_render, fixture, tmp_path):
    from fixtures import fixture_dir

    folder = fixture_dir(fixture)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # FROM target; its contents do not matter here
    res = write_modelfile(folder, tmp_path, gguf=tmp_path / "m.gguf")
    mf = parse_modelfile(res.modelfile.read_text(encoding="utf-8"))
    template, bos, eos, strip = hf_tokens(folder)
    assert mf["from"] == "./m.gguf"
    check_equivalence(go_render, template, mf, bos, eos, strip)
    trims = any("trims whitespace" in c for c in mf["comments"])
    check_stops(template, mf["stop"], bos, eos, trims)
    if fixture in ("smollm2", "qwen2", "qwen3"):  # ChatML templates that inject a default system prompt
        assert mf["system"] and "SYSTEM is the chat template's own default" in "\n".join(mf["comments"])
    preset = json.loads(res.preset.read_text(encoding="utf-8"))
    check_manual_form(preset, template, bos, eos, trims, strip)


def check_manual_form(preset: dict, template: str, bos: str, eos: str, trims: bool, strip: bool = True) -> None:
    fields = {f["key"]: f["value"] for f in preset["operation"]["fields"]}
    pt = fields["llm.prediction.promptTemplate"]
    assert pt["type"] == "jinja" and pt["jinjaPromptTemplate"]["template"] == template
    manual = pt.get("manualPromptTemplate")
    if manual is None:
        return
    system = fields["llm.prediction.systemPrompt"] or None
    role = {"system": "System", "user": "User", "assistant": "Assistant"}
    for name, msgs in conversations(trims).items():
        full = msgs if not system or msgs[0]["role"] == "system" else [{"role": "system", "content": system}, *msgs]
        got = "".join(manual[f"before{role[m['role']]}"] + m["content"] + manual[f"after{role[m['role']]}"]
                      for m in full) + manual["beforeAssistant"]
        assert got == expected(template, msgs, system, bos, eos, strip), name


# -- through the CLI, from a converted GGUF -------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_from_gguf_writes_modelfile_and_presets(converted, go_render, tmp_path):
    from fixtures import fixture_dir

    gguf = converted("smollm2", "q8_0")
    src = fixture_dir("smollm2")
    out = tmp_path / "out"
    r = run("modelfile", str(gguf), "-o", str(out), "--source", str(src), "--ctx", "4096", "--name", "smol-test",
            "--lmstudio-legacy", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    mf = parse_modelfile(Path(info["modelfile"]).read_text(encoding="utf-8"))
    assert Path(info["modelfile"]).parent.joinpath(mf["from"]).resolve() == gguf.resolve()
    assert mf["params"]["num_ctx"] == "4096" and "<|im_end|>" in mf["stop"]
    gen = json.loads((src / "generation_config.json").read_text()) if (src / "generation_config.json").is_file() else {}
    if "temperature" in gen and gen.get("do_sample") is not False:
        assert float(mf["params"]["temperature"]) == gen["temperature"]
    template, bos, eos, strip = hf_tokens(src)
    assert not strip  # SmolLM2's BOS text is <|im_start|>, which its GGUF does not add: TEMPLATE must write it
    assert mf["template"].startswith("{{") and "<|im_start|>system" in mf["template"]
    check_equivalence(go_render, template, mf, bos, eos, strip)
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.yaml", "smol-test.legacy.preset.json",
                                                      "smol-test.preset.json"]
    legacy = json.loads((out / "smol-test.legacy.preset.json").read_text())
    assert legacy["inference_params"]["antiprompt"] == mf["stop"] and legacy["load_params"]["n_ctx"] == 4096
    check_manual_form(json.loads((out / "smol-test.preset.json").read_text()), template, bos, eos, False, strip)
    validate_presets([out / "smol-test.preset.json"])


# -- LM Studio's own schema ------------------------------------------------------------------------------------------
def validate_presets(paths: list[Path]) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (HERE / "node" / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed")
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=HERE / "node", check=True, capture_output=True)
    r = subprocess.run([node, str(HERE / "node" / "validate.js"), *map(str, paths)], capture_output=True, text=True)
    return r


def test_presets_validate_against_lmstudio_schema(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    paths = []
    for name in ("llama3", "gemma", "firefly-llama3"):
        hf = _stub_hf(tmp_path / f"hf-{name}", name)
        res = write_modelfile(hf, tmp_path / f"out-{name}", gguf=tmp_path / "m.gguf", ctx=2048)
        paths.append(res.preset)
    r = validate_presets(paths)
    assert r.returncode == 0, r.stdout + r.stderr
    # the check can fail: a wrong value type is reported
    bad = json.loads(paths[0].read_text())
    bad["load"]["fields"][0]["value"] = "2048 tokens"
    (tmp_path / "bad.preset.json").write_text(json.dumps(bad))
    r = validate_presets([tmp_path / "bad.preset.json"])
    assert r.returncode == 1 and "llm.load.contextLength" in r.stdout


def _stub_hf(folder: Path, template_name: str) -> Path:
    """A HF folder with only a tokenizer_config.json carrying a named template (enough for the Modelfile)."""
    bos, eos = FAMILY_TOKENS[template_name]
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": load_template(template_name), "bos_token": bos, "eos_token": eos}))
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9,
                                                               "top_k": 40, "repetition_penalty": 1.1}))
    return folder


# -- constructs of real-world templates (our own templates in each family's style) ----------------------------------
_CHATML_GEN = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
REAL_WORLD = {
    # Phi-3 mini style: system messages are silently left out
    "system ignored": ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}<|user|>\n{{ m.content }}"
                       "<|end|>\n<|assistant|>\n{% elif m.role == 'assistant' %}{{ m.content }}<|end|>\n{% endif %}{% endfor %}",
                       "<s>", "<|endoftext|>"),
    # Gemma 1 / Mistral v0.1 style: a system message is an error (raise_exception), roles must alternate
    "system refused": ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                       "supported') }}{% endif %}{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 "
                       "== 0) %}{{ raise_exception('roles must alternate') }}{% endif %}<turn>{{ 'model' if m.role == "
                       "'assistant' else m.role }}\n{{ m.content }}</turn>\n{% endfor %}"
                       "{% if add_generation_prompt %}<turn>model\n{% endif %}", "<bos>", "<eos>"),
    # ChatQA / Magicoder style: a fixed preamble before the first turn, system messages refused
    "fixed preamble, system refused": ("{% if messages[0].role == 'system' %}{{ raise_exception('No system "
                                       "messages.') }}{% endif %}Helper session.\n\n{% for m in messages %}"
                                       "{{ '### Q\n' if m.role == 'user' else '### A\n' }}{{ m.content }}\n\n"
                                       "{% endfor %}### A\n", "", "<|endoftext|>"),
    # GLM-4 style: fixed opening tokens before everything, system or not, and the next role tag ends a reply
    "fixed opening": ("[gX]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
                      "{% if add_generation_prompt %}<|assistant|>{% endif %}", "", "<|user|>"),
    # Qwen3.5 style: without a system message a fixed system block that is no system prompt (an effort line)
    "fixed text in place of a system block": (
        "{% set effort = 'Effort: high.' %}{% if messages[0].role == 'system' %}<|im_start|>system\n{{ effort }}\n\n"
        "{{ messages[0].content }}<|im_end|>\n{% else %}<|im_start|>system\n{{ effort }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}{% if m.role != 'system' %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endif %}{% endfor %}" + _CHATML_GEN, "", "<|im_end|>"),
    # Qwen3 / DeepSeek-R1 style: earlier replies lose their <think> part; a namespace finds the last user turn
    "think cut from earlier replies": (
        "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.last = loop.index0 "
        "%}{% endif %}{% endfor %}{% for m in messages %}{% set c = m.content %}{% if m.role == 'assistant' and "
        "'</think>' in c and loop.index0 < ns.last %}{% set c = c.split('</think>')[-1].lstrip('\n') %}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ c }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant"
        "\n<think>\n{% endif %}", "", "<|im_end|>"),
    # Llama 3.1 style: the system block carries fixed extra text (a fixed date) and is written without a system too
    "fixed date in the system block": (
        "{{ bos_token }}{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = "
        "messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}{% set date_string = "
        "date_string | default('26 Jul 2024') %}<|sh|>system<|eh|>\n\nKnowledge: 2023\nToday: {{ date_string }}\n\n"
        "{{ sys }}<|eot|>{% for m in rest %}<|sh|>{{ m.role }}<|eh|>\n\n{{ m.content }}<|eot|>{% endfor %}"
        "{% if add_generation_prompt %}<|sh|>assistant<|eh|>\n\n{% endif %}", "<|bot|>", "<|eot|>"),
}
THINK_CONV = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nHm.\n</think>\n\nHello."},
              {"role": "user", "content": "Bye"}]


@pytest.mark.parametrize("case", sorted(REAL_WORLD))
def test_real_world_constructs_render_identically_in_go(go_render, case, tmp_path):
    template, bos, eos = REAL_WORLD[case]
    tr = translate(template, bos=bos, eos=eos, extra_stop_tokens=[eos])
    mf = parse_modelfile(modelfile_text(name="m", from_path="./m.gguf", template=tr.go_template, system=tr.system,
                                        stops=tr.stops, parameters={"num_ctx": 4096}, license=None, notes=tr.notes))
    convs = conversations(tr.trims)
    outs = go_render(mf["template"], mf.get("system"), list(convs.values()))
    refused = 0
    for (name, msgs), go_out in zip(convs.items(), outs):
        if "refused" in case and msgs[0]["role"] == "system":
            # the template raises on a system message; Ollama answers that request with the template's error
            with pytest.raises(Exception, match="System role not supported|No system messages"):
                jinja_render(template, msgs, bos, eos)
            assert go_out.startswith("\x00template error") and ("System role" in go_out or "No system" in go_out)
            refused += 1
            continue
        assert go_out == expected(template, msgs, mf.get("system"), bos, eos), name
    assert refused == (sum(m[0]["role"] == "system" for m in convs.values()) if "refused" in case else 0)
    check_stops(template, mf["stop"], bos, eos, tr.trims)
    if case == "system ignored":
        assert mf.get("system") is None and any("ignores system" in w for w in tr.warnings)
    if case == "think cut from earlier replies":
        # the documented exception: replies sent back without their <think> part render exactly
        cut = [dict(m, content=m["content"].split("</think>")[-1].lstrip("\n")) for m in THINK_CONV]
        assert go_render(mf["template"], None, [cut]) == [jinja_render(template, THINK_CONV, bos, eos)]
        assert any("<think>" in c for c in mf["comments"]) and any("<think>" in w for w in tr.warnings)
    else:
        assert go_render(mf["template"], mf.get("system"), [THINK_CONV]) == [
            expected(template, THINK_CONV, mf.get("system"), bos, eos)]


def test_system_for_a_template_without_one_is_an_error(tmp_path):
    hf = _stub_hf(tmp_path / "hf", "chatml")
    (tmp_path / "t.jinja").write_text(REAL_WORLD["system ignored"][0])
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    r = run("modelfile", str(hf), "--gguf", str(tmp_path / "m.gguf"), "--template", str(tmp_path / "t.jinja"),
            "--system", "Be brief.", "-o", str(tmp_path / "o"))
    assert_user_error(r, "--system", "ignores system messages")


# -- templates we cannot reproduce, bad input ------------------------------------------------------------------------
UNREPRODUCIBLE = {
    "upper": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | upper }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "transforms"),
    "second user turn": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'user' and loop.index0 > 1 %}"
                         "Again: {% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "reproduce"),
    # Llama 3.2 style: today's date from strftime_now; an Ollama template cannot write it that way
    "today's date": ("{% set d = strftime_now('%d %b %Y') %}<|im_start|>system\nToday: {{ d }}<|im_end|>\n"
                     "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "date"),
    # earlier replies' <think> part rewritten rather than cut
    "think rewritten": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.replace('<think>', '<r>') }}"
                        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
                        "<think>"),
}


@pytest.mark.parametrize("case", sorted(UNREPRODUCIBLE))
def test_unreproducible_template_is_an_error_and_writes_nothing(tmp_path, case):
    template, word = UNREPRODUCIBLE[case]
    (tmp_path / "t.jinja").write_text(template)
    hf = _stub_hf(tmp_path / "hf", "chatml")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    out = tmp_path / "out"
    out.mkdir()
    r = run("modelfile", str(hf), "--gguf", str(tmp_path / "m.gguf"), "--template", str(tmp_path / "t.jinja"),
            "-o", str(out))
    assert_user_error(r, word)
    assert list(out.iterdir()) == []


def test_bad_input(tmp_path):
    hf = _stub_hf(tmp_path / "hf", "chatml")
    assert_user_error(run("modelfile", str(hf), "-o", str(tmp_path)), "--gguf")
    assert_user_error(run("modelfile", str(hf), "--gguf", str(tmp_path / "missing.gguf")), "missing.gguf")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert_user_error(run("modelfile", str(hf), "--gguf", str(tmp_path / "m.gguf"), "--template", "nosuch"),
                      "nosuch", "chatml")
    r = run("modelfile", str(hf), "--gguf", str(tmp_path / "m.gguf"), "--template", "gemma", "--lmstudio-legacy",
            "-o", str(tmp_path / "o"))
    assert_user_error(r, "--lmstudio-legacy")
    if shutil.which("ollama") is None:
        r = run("modelfile", str(hf), "--gguf", str(tmp_path / "m.gguf"), "--ollama-create", "x", "-o", str(tmp_path / "o"))
        assert_user_error(r, "ollama", "PATH")
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
