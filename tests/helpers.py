"""What the CLI tests share: run `quantize` as a user would, and check a user error."""

from __future__ import annotations

import os
import subprocess
import sys

QUANTIZE = [sys.executable, "-m", "gguf_forge.tools.cli"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``quantize ARGS...`` in a child process, capturing its output."""
    return subprocess.run([*QUANTIZE, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def assert_user_error(r: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2, exactly one ``error: ...`` line on stderr (no traceback) containing every word."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
