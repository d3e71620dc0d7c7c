"""The real Go text/template (tests/go, Ollama's template data written from its source) for the Modelfile tests:
built once per session, then fed JSON requests (plain conversations, tool conversations, tag / thinking-tag modes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

GO_DIR = Path(__file__).resolve().parent / "go"


def build(tmp_path_factory) -> Path:
    """The renderer binary (the test is skipped where Go is not installed)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (make test installs Debian's golang-go)")
    out = tmp_path_factory.mktemp("gorender") / "render"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    r = subprocess.run([go, "build", "-o", str(out), "."], cwd=GO_DIR, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return out


def request(binary: Path, req: dict) -> object:
    """One request to the renderer; its JSON answer (a list of renderings, or the tag / thinking tags)."""
    p = subprocess.run([str(binary)], input=json.dumps(req), capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)
