"""The ``quantize`` group loads a command's module only when that command runs: every command is still listed by
``quantize --help`` with its one-line help, and ``quantize imatrix`` on a GGUF starts without torch, transformers or
the other commands' modules (what a user waits for at every run)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import click
from click.testing import CliRunner

from gguf_forge.tools import cli
from gguf_forge.tools.cli.main import COMMANDS, main

from helpers import QUANTIZE


def defined_commands() -> dict[str, click.Command]:
    """Every click command defined at the top of a module of tools/cli (the ``quantize`` group itself aside)."""
    found = {}
    for info in pkgutil.iter_modules(cli.__path__):
        if info.name == "__main__":  # runs the command line
            continue
        module = importlib.import_module(f"{cli.__name__}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, click.Command) and value is not main
                    and getattr(value.callback, "__module__", None) == module.__name__):
                found[value.name] = value
    return found


def test_help_lists_every_command_with_its_one_line_help():
    defined = defined_commands()
    # a command written but not added to the table (or a table entry naming another command) fails here
    assert set(COMMANDS) == set(defined), (sorted(COMMANDS), sorted(defined))
    r = subprocess.run([*QUANTIZE, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listed = {}
    for line in r.stdout.split("\nCommands:\n", 1)[1].splitlines():
        name, _, text = line.strip().partition(" ")
        listed[name] = " ".join(text.split())
    assert set(listed) == set(COMMANDS)
    for name, text in listed.items():
        short = text.removesuffix("...").rstrip(" .,")
        assert len(short) > 10, (name, text)
        assert " ".join(defined[name].help.split()).startswith(short), (name, text)


def test_every_command_help_and_the_error_boundary_are_unchanged():
    runner = CliRunner()
    for name in COMMANDS:
        r = runner.invoke(main, [name, "--help"], prog_name="quantize")
        assert r.exit_code == 0 and f"Usage: quantize {name} [OPTIONS]" in r.output, (name, r.output)
        assert "Example" in r.output, name
    r = subprocess.run([*QUANTIZE, "no-such-command"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: No such command 'no-such-command'. (see quantize --help)"], r.stderr


PROBE = """
import json, sys
from gguf_forge.tools.cli.main import main
try:
    main(sys.argv[2:], prog_name="quantize")
except SystemExit as e:
    rc = e.code
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "modules": sorted(sys.modules)}, f)
"""


def test_imatrix_on_a_gguf_imports_neither_torch_nor_other_commands(tmp_path, converted):
    gguf = converted("qwen2", "f32")
    out, report = tmp_path / "im.gguf", tmp_path / "modules.json"
    r = subprocess.run([sys.executable, "-c", PROBE, str(report), "imatrix", str(gguf), "--ctx", "64", "--chunks", "2",
                        "-o", str(out), "--no-progress", "--threads", "2"], capture_output=True, text=True)
    seen = json.loads(report.read_text())
    assert seen["rc"] == 0 and out.is_file(), r.stderr
    modules = set(seen["modules"])
    assert "llama_cpp" in modules and "gguf_forge.tools.cli.quant" in modules  # the probe saw the real run
    heavy = {"torch", "transformers", "accelerate", "safetensors.torch"} & modules
    assert not heavy, heavy
    others = {m for m in modules if m.startswith(("gguf_forge.tools.cli.", "gguf_forge.tools.serve",
                                                   "gguf_forge.tools.pipeline", "gguf_forge.tools.publish"))}
    assert others <= {"gguf_forge.tools.cli.main", "gguf_forge.tools.cli.quant", "gguf_forge.tools.cli.options"}, \
        others
