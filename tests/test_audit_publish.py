"""Issue 13 gaps: `quantize publish` refuses a folder whose end-of-turn audit found a mismatch metadata cannot fix
(recorded in manifest.json by the pipeline, or run at publish time when the manifest records none), against the
local hub (tests/hubserver.py); a context too large is a library error naming its parameter, worded as the
command's option by the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gguf_forge.errors import ForgeError
from test_publish import REPO, TOKEN, _entry, hub_env, make_outdir

from helpers import QUANTIZE, assert_user_error, run
from hubserver import HubServer

PROBLEM = ("the model ends its replies with <|im_end|> while the template closes a turn with <|endoftext|>: a "
           "fine-tune trained with another end token (or the template does not match the training)")
WRONG_END = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
             "{% if message['role'] == 'assistant' %}{{ '<|endoftext|>\\n' }}{% else %}{{ '<|im_end|>\\n' }}"
             "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _record(outdir: Path, audit: dict | None) -> None:
    """Put ``audit`` (the pipeline's record) into the folder's manifest.json (not listed in its own outputs)."""
    path = outdir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["audit"] = audit
    if audit is None:
        del manifest["audit"]
    path.write_text(json.dumps(manifest, indent=2))


def _audit(*mismatches: tuple[str, bool]) -> dict:
    """An audit record as the pipeline writes it (tools/pipeline/run.py: Audit.as_dict() + unfixable)."""
    return {"turn_end": "<|im_end|>", "signals": [],
            "mismatches": [{"problem": p, "fix": "...", "fixable": f} for p, f in mismatches],
            "ok": not mismatches, "unfixable": [p for p, f in mismatches if not f]}


def test_publish_refuses_a_recorded_unfixable_audit_mismatch_and_sends_nothing(tmp_path):
    """The gap: a pipeline run stopped on an unfixable mismatch, its folder (manifest and card written) published
    by hand. Refused before anything reaches the hub, one line naming manifest.json, the mismatch, what to do and
    the override; --allow-audit-mismatch publishes it, with the mismatch as a warning."""
    outdir = make_outdir(tmp_path / "out")
    _record(outdir, _audit((PROBLEM, False), ("the Modelfile's stops [] lack <|im_end|>", True)))
    with HubServer(TOKEN) as hub:
        env = hub_env(tmp_path, hub)
        for extra in ([], ["--dry-run"], ["--json"]):
            r = run("publish", str(outdir), "--repo", REPO, "--no-progress", *extra, env=env)
            assert_user_error(r, str(outdir / "manifest.json"), "end-of-turn audit", "cannot fix", PROBLEM,
                              "--template", "quantize audit", "--allow-audit-mismatch")
            assert "the Modelfile's stops" not in r.stderr  # only what blocks is named
        assert hub.log == [] and not hub.repos
        r = run("publish", str(outdir), "--repo", REPO, "--no-progress", "--allow-audit-mismatch", env=env)
        assert r.returncode == 0, r.stderr
        assert f"warning: end-of-turn audit: {PROBLEM} (let through by --allow-audit-mismatch)" in r.stderr
        assert "warning: end-of-turn audit: the Modelfile's stops [] lack <|im_end|>" in r.stderr
        assert "end-of-turn audit (recorded in manifest.json): 2 mismatch(es), 1 that metadata cannot fix" in r.stdout
        assert set(hub.files(REPO)) >= {"Tiny-Q8_0.gguf", "Modelfile", "README.md", "manifest.json"}


def test_publish_goes_ahead_on_a_clean_or_fixable_audit_and_refuses_a_changed_file(tmp_path):
    """Fixable mismatches do not stop the pipeline and do not stop publish (warnings); a clean audit is stated in the
    plan; a file changed after the audit (its sha256 in manifest.json no longer matches) is refused."""
    outdir = make_outdir(tmp_path / "out")
    _record(outdir, _audit())
    r = run("publish", str(outdir), "--repo", REPO, "--dry-run", "--no-progress", env=hub_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "end-of-turn audit (recorded in manifest.json): no mismatch, turns end with <|im_end|>" in r.stdout
    _record(outdir, _audit(("the GGUF's eos/eot ids [2, None] do not include <|im_end|> (2)", True)))
    r = run("publish", str(outdir), "--repo", REPO, "--dry-run", "--json", "--no-progress", env=hub_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "warning: end-of-turn audit: the GGUF's eos/eot ids" in r.stderr
    assert "1 mismatch(es), 0 that metadata cannot fix" in json.loads(r.stdout)["audit"]
    _record(outdir, "yes")
    assert_user_error(run("publish", str(outdir), "--repo", REPO, "--dry-run", "--no-progress", env=hub_env(tmp_path)),
                      "manifest.json", "'audit'", "re-run the pipeline")
    _record(outdir, _audit())
    with open(outdir / "Modelfile", "a") as f:  # e.g. a stop added by hand after the audit
        f.write('PARAMETER stop "<|im_end|>"\n')
    assert_user_error(run("publish", str(outdir), "--repo", REPO, "--dry-run", "--no-progress", env=hub_env(tmp_path)),
                      "Modelfile", "sha256", "modified after the pipeline ran")


def _folder_of(gguf: Path, folder: Path, template: str | None) -> Path:
    """A pipeline-shaped folder around a real model (its template replaced by ``template``), manifest without an
    audit record (as gguf-forge wrote it before the audit existed)."""
    from gguf_forge.keys import TOKENIZER
    from gguf_forge.modelfiles.audit import set_gguf_metadata

    folder.mkdir()
    shutil.copyfile(gguf, folder / "M-Q8_0.gguf")
    if template is not None:
        set_gguf_metadata(folder / "M-Q8_0.gguf", {TOKENIZER.CHAT_TEMPLATE: template})
    (folder / "Modelfile").write_text('FROM ./M-Q8_0.gguf\nPARAMETER stop "<|im_end|>"\n'
                                      'PARAMETER stop "<|endoftext|>"\n')
    manifest = {"tool": {"name": "gguf-forge", "version": "0.1.0", "llama_cpp_python": "0.3.36"}, "name": "M",
                "outputs": [_entry(folder, "M-Q8_0.gguf", "gguf", type="Q8_0"),
                            _entry(folder, "Modelfile", "modelfile")]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.slow
def test_a_manifest_without_audit_record_is_audited_at_publish_time(converted, tmp_path):
    """An older manifest (no audit record): publish runs the audit on the folder's default GGUF, greedy replies
    included, and refuses a model that ends its replies with another token than its template; the same model with
    its own template goes ahead. A folder without manifest.json stays refused (nothing says what to upload)."""
    q8 = converted("smollm2", "q8_0")
    wrong = _folder_of(q8, tmp_path / "wrong", WRONG_END)
    with HubServer(TOKEN) as hub:
        r = run("publish", str(wrong), "--repo", REPO, "--no-progress", env=hub_env(tmp_path, hub))
        assert_user_error(r, str(wrong / "manifest.json"), "audit (run now: manifest.json records none)",
                          "<|im_end|>", "<|endoftext|>", "--allow-audit-mismatch")
        assert hub.log == []
    own = _folder_of(q8, tmp_path / "own", None)
    r = run("publish", str(own), "--repo", REPO, "--dry-run", "--no-progress", env=hub_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "end-of-turn audit (run now: manifest.json records none): no mismatch, turns end with <|im_end|>" \
        in r.stdout
    (own / "manifest.json").unlink()
    assert_user_error(run("publish", str(own), "--repo", REPO, "--dry-run", env=hub_env(tmp_path)),
                      "no manifest.json", "not a pipeline output")


# -- a context too large: the library names its parameter, the CLI its option -----------------------------------

def test_context_too_large_names_the_parameter_and_the_cli_names_the_option(converted):
    from gguf_forge.tools.chat.session import ChatSession, check_context

    q8 = converted("smollm2", "q8_0")
    with pytest.raises(ForgeError) as e:
        check_context(q8, 2_000_000_000)
    assert e.value.option == "ctx" and "--" not in str(e.value)
    assert str(e.value).startswith("2000000000 tokens: too large a context for this model")
    for kwargs, option in (({"ctx": 8}, "ctx"), ({"max_tokens": 0}, "max_tokens")):
        with pytest.raises(ForgeError) as e:
            ChatSession(q8, **kwargs)
        assert e.value.option == option and "--" not in str(e.value)
    r = subprocess.run([*QUANTIZE, "chat", str(q8), "--threads", "1", "--ctx", "2000000000"], input="hi\n",
                       capture_output=True, text=True)
    assert_user_error(r, "--ctx 2000000000 tokens: too large a context", "use a smaller context")
    r = run("smoke", str(q8), "--threads", "1", "--ctx", "2000000000", "--no-progress")
    assert_user_error(r, "--ctx 2000000000 tokens: too large a context")


def test_audit_fix_keeps_the_manifest_true_so_the_fixed_folder_publishes(converted, tmp_path):
    """The pipeline records a fixable mismatch (here: the Modelfile lacks the turn's end as a stop) and tells the
    user to run `quantize audit --fix`; that rewrites the Modelfile, so without more publish would refuse its
    sha256. --fix in an output folder updates manifest.json (new sha256, mismatch out of the audit record) and
    the card's audit paragraph: publish then goes ahead with a clean audit."""
    from gguf_forge.modelfiles.audit import audit
    from gguf_forge.tools.pipeline.card import _audit_text

    folder = _folder_of(converted("smollm2", "q8_0"), tmp_path / "out", None)
    (folder / "Modelfile").write_text("FROM ./M-Q8_0.gguf\n")
    result = audit(folder, generate=False)
    assert [m.kind for m in result.mismatches] == ["modelfile"]
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["audit"] = {**result.as_dict(), "unfixable": []}
    manifest["outputs"][1] = _entry(folder, "Modelfile", "modelfile")
    (folder / "README.md").write_text(f"# M\n\n{_audit_text(manifest)}\n\nmore text\n")
    manifest["outputs"].append(_entry(folder, "README.md", "model-card"))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    env = hub_env(tmp_path)
    r = run("publish", str(folder), "--repo", REPO, "--dry-run", "--no-progress", env=env)
    assert r.returncode == 0 and "warning: end-of-turn audit: the Modelfile's stops [] lack <|im_end|>" in r.stderr

    r = run("audit", str(folder), "--fix", "--no-generate", "--json")
    assert r.returncode == 0, r.stderr
    fixed = json.loads(r.stdout)["fixed"]
    assert any("PARAMETER stop" in f for f in fixed) and any("manifest.json" in f for f in fixed)
    assert 'PARAMETER stop "<|im_end|>"' in (folder / "Modelfile").read_text()
    record = json.loads((folder / "manifest.json").read_text())["audit"]
    assert record["ok"] and record["mismatches"] == [] and "PARAMETER stop" in record["fixed"][0]
    card = (folder / "README.md").read_text()
    assert "End-of-turn audit: every runtime stops" in card and "mismatches" not in card and "more text" in card
    r = run("publish", str(folder), "--repo", REPO, "--dry-run", "--no-progress", env=env)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "end-of-turn audit (recorded in manifest.json): no mismatch" in r.stdout
    # a GGUF given directly: the same, for the folder it lies in; nothing left to fix
    r = run("audit", str(folder / "M-Q8_0.gguf"), "--fix", "--no-generate", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["fixed"] == []
