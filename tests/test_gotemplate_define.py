"""``{{ define }}`` / ``{{ template }}`` (recursive), Ollama's ``currentDate``, ``.ThinkLevel`` and the nested
``properties`` map in modelfiles/gotemplate.py, held to the real Go ``text/template`` (tests/go) byte for byte."""

from __future__ import annotations

import json
import subprocess
from datetime import date

import pytest

import gorender
from gguf_forge.modelfiles import gotemplate

# a JSON-schema walk as the Harmony layout writes one: nested properties through Ollama's ordered map (ToMap, in
# key order; Len, also on a nil pointer), items as raw JSON maps, recursion through both
SCHEMA_WALK = """{{- define "raw" }}{{ $t := printf "%v" .type }}{{ if eq $t "object" }}{ {{- range $k, $v := .properties }}
{{- $k }}: {{ template "raw" $v }}; {{ end }}}{{ else if eq $t "array" }}{{ if .items }}{{ template "raw" .items }}[]
{{- else }}any[]{{ end }}{{ else if eq $t "<nil>" }}any{{ else }}{{ $t }}{{ end }}{{ end -}}
{{- define "prop" }}{{ $t := "" }}{{ if .Type }}{{ $t = index .Type 0 }}{{ end }}
{{- if eq $t "object" }}{{ if .Properties.Len }}{ {{- range $k, $v := .Properties.ToMap }}{{ $k }}: {{ template "prop" $v }}; {{ end }}}
{{- else }}object{{ end }}{{ else if eq $t "array" }}{{ if .Items }}{{ template "raw" .Items }}[]{{ else }}any[]{{ end }}
{{- else if .Enum }}{{ range $i, $e := .Enum }}{{ if $i }} | {{ end }}"{{ $e }}"{{ end }}{{ else if $t }}{{ $t }}{{ else }}any{{ end }}
{{- end -}}
{{ range .Tools }}{{ .Function.Name }}({{ range $k, $v := .Function.Parameters.Properties }}{{ $k }}: {{ template "prop" $v }}, {{ end }})
{{ json . }}
{{ end }}"""

TOOL = {"type": "function", "function": {"name": "plan", "description": "Plan a trip.", "parameters": {
    "type": "object", "required": ["stops"], "properties": {
        "stops": {"type": "array", "items": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}}}}},
        "mode": {"type": "string", "enum": ["train", "car"]},
        "budget": {"type": "object", "properties": {"zmax": {"type": "number"}, "currency": {"type": "string"},
                                                    "inner": {"type": "object", "properties": {
                                                        "b": {"type": "boolean"}, "a": {"type": "null"}}}}},
        "empty": {"type": "object", "properties": {}},
        "bare": {"type": "object"},
        "anything": {"description": "no type"},
        "list": {"type": "array"}}}}}


@pytest.fixture(scope="module")
def go_bin(tmp_path_factory):
    return gorender.build(tmp_path_factory)


def both(go_bin, template: str, conv: dict) -> tuple[str, str]:
    go = gorender.request(go_bin, {"template": template, "conversations": [conv]})[0]
    py_data = gotemplate.ollama_data(conv["messages"], conv.get("tools"), conv.get("think"))
    try:
        py = gotemplate.render(template, py_data)
    except gotemplate.GoTemplateError as e:
        py = "\x00template error: " + str(e)
    return go, py


def test_a_recursive_schema_walk_renders_as_go_does(go_bin):
    conv = {"messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]}
    go, py = both(go_bin, SCHEMA_WALK, conv)
    assert not go.startswith("\x00"), go
    assert py == go
    # recursion really happened: the nested objects, the array of objects and its array of strings
    assert "inner: {a: null; b: boolean; }" in go and "{city: string; days: integer; tags: string[]; }[]" in go
    # nested properties marshal in the order the client sent them (Ollama's ordered map), top-level ones sorted
    assert '"properties":{"zmax":{"type":"number"},"currency"' in go
    assert go.index('"anything":{') < go.index('"budget":{') < go.index('"stops":{')


def test_an_undefined_template_is_an_execution_error_in_both(go_bin):
    tpl = '{{ define "a" }}A{{ end }}{{ if .Messages }}{{ template "b" . }}{{ end }}'
    go, py = both(go_bin, tpl, {"messages": [{"role": "user", "content": "hi"}]})
    assert go.startswith("\x00template error") and 'template "b" not defined' in go
    assert py.startswith("\x00template error") and "'b' not defined" in py
    # not executed: no error in either
    go, py = both(go_bin, tpl, {"messages": []})
    assert go == py == ""


def test_a_template_call_without_pipeline_is_refused_as_ollama_refuses_it(go_bin):
    tpl = '{{ define "a" }}A{{ end }}{{ template "a" }}'
    p = subprocess.run([str(go_bin)], input=json.dumps({"template": tpl, "conversations": [[]]}),
                       capture_output=True, text=True)
    assert p.returncode == 1 and "undefined template specified" in p.stdout
    with pytest.raises(gotemplate.GoTemplateError, match="without a pipeline"):
        gotemplate.parse(tpl)


def test_define_is_top_level_only_and_variables_do_not_leak_into_it(go_bin):
    nested = '{{ if true }}{{ define "a" }}A{{ end }}{{ end }}'
    p = subprocess.run([str(go_bin)], input=json.dumps({"template": nested, "conversations": [[]]}),
                       capture_output=True, text=True)
    assert p.returncode == 1
    with pytest.raises(gotemplate.GoTemplateError, match="top-level"):
        gotemplate.parse(nested)
    # $ inside a define is the value passed to it; a define's own variables start fresh on each call
    tpl = ('{{ define "d" }}{{ $x := "in" }}[{{ $x }}{{ if gt (len .) 1 }}{{ template "d" (slice . 1) }}{{ end }}'
           '{{ len $ }}]{{ end }}{{ $x := "out" }}{{ template "d" .Messages }}{{ $x }}')
    conv = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}]}
    go, py = both(go_bin, tpl, conv)
    assert go == py == "[in[in[in1]2]3]out"


def test_current_date_and_think_level_are_ollamas(go_bin):
    tpl = "{{ currentDate }}|{{ currentDate \"%d %b\" }}|{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}"
    for think, want in ((None, "false||false"), (True, "true|medium|true"), (False, "false||true"),
                        ("low", "true|low|true"), ("high", "true|high|true")):
        go, py = both(go_bin, tpl, {"messages": [], "think": think})
        today = date.today().isoformat()
        assert go == py == f"{today}|{today}|{want}", think
    assert gotemplate.render("{{ currentDate }}", {}, today=date(2031, 1, 9)) == "2031-01-09"


def test_eq_with_a_missing_map_key_is_false_in_both(go_bin):
    tpl = ('{{ range .Tools }}{{ range $k, $v := .Function.Parameters.Properties }}{{ $k }}:'
           '{{ if $v.Items }}{{ eq $v.Items.type "string" }}{{ eq $v.Items.nope "string" }}{{ end }};{{ end }}{{ end }}')
    go, py = both(go_bin, tpl, {"messages": [], "tools": [TOOL]})
    assert go == py and "stops:falsefalse;" in go


def test_printf_q_quotes_as_go_does(go_bin):
    """%q / %+q (used to tell an ASCII type text from one Go and Jinja would measure differently)."""
    tpl = '{{ range .Messages }}{{ printf "%q|%+q|%d" .Content .Content (len .Content) }}\n{{ end }}'
    conv = {"messages": [{"role": "user", "content": 'plain "q" \\ tab\there\nnl'},
                         {"role": "assistant", "content": "héllo 日本 😀 \x01\x7f"}]}
    go, py = both(go_bin, tpl, conv)
    assert not go.startswith("\x00") and py == go
    first, second = go.splitlines()
    assert first.split("|")[0] == first.split("|")[1]  # ASCII: both the same
    assert len(second.split("|")[0]) != len(second.split("|")[1])
