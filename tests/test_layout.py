"""The layout stays as designed: imports run one way, and no import hides inside a function to dodge a cycle.

Layers, lowest first (a module may import its own layer or lower ones, never a higher one, and never a sibling
package of its own rank):

    core (errors, files, keys, chat_template) < runtime < convert < modelfiles < quant < tools.chat
    < tools.pipeline | tools.publish | tools.serve < tools.cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# folder -> import name, as pyproject.toml maps them
FOLDERS = {"gguf_forge": "gguf_forge", "convert": "gguf_forge.convert", "quant": "gguf_forge.quant",
           "modelfiles": "gguf_forge.modelfiles", "tools": "gguf_forge.tools"}

# (module prefix, layer name, rank); the longest matching prefix decides
LAYERS = [
    ("gguf_forge", "core", 0),
    ("gguf_forge.runtime", "runtime", 1),
    ("gguf_forge.convert", "convert", 2),
    ("gguf_forge.modelfiles", "modelfiles", 3),
    ("gguf_forge.quant", "quant", 4),
    ("gguf_forge.tools.chat", "chat", 5),
    ("gguf_forge.tools.pipeline", "pipeline", 6),
    ("gguf_forge.tools.publish", "publish", 6),
    ("gguf_forge.tools.serve", "serve", 6),
    ("gguf_forge.tools", "cli", 7),
    ("gguf_forge.tools.cli", "cli", 7),
]


def layer(module: str) -> tuple[str, int]:
    best = max((p for p in LAYERS if module == p[0] or module.startswith(p[0] + ".")), key=lambda p: len(p[0]))
    return best[1], best[2]


def module_files() -> dict[str, Path]:
    """Every module of the package: import name -> file."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def imported_modules(module: str, is_package: bool, node: ast.AST) -> list[str]:
    """The gguf_forge modules an import statement names (relative imports resolved against ``module``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "gguf_forge"]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "gguf_forge":
        return []
    # `from pkg import name` may name a submodule: check it as pkg.name where that is a module
    return [target] + [f"{target}.{a.name}" for a in node.names]


def violations(module: str, source: str, is_package: bool, known: set[str]) -> list[str]:
    """Every import in ``source`` (the code of ``module``) that breaks the layering, as readable lines."""
    tree = ast.parse(source)
    found = []
    src_layer, src_rank = layer(module)
    inside_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside_function.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = [t for t in imported_modules(module, is_package, node) if t in known or t == "gguf_forge"]
        for target in targets:
            dst_layer, dst_rank = layer(target)
            where = f"{module}:{node.lineno} imports {target}"
            if id(node) in inside_function:
                found.append(f"{where} inside a function (move it to the top of the module)")
            if dst_rank > src_rank or (dst_rank == src_rank and dst_layer != src_layer):
                found.append(f"{where}: layer {src_layer} may not import layer {dst_layer}")
    return found


#: the only functions that import a module by name (importlib), each with why; the import statements above are
#: what the layers are checked on, so any other import by name is a violation
BY_NAME = {
    ("gguf_forge.convert.arch", "_import_architectures"): "every module of its own package registers architectures",
    ("gguf_forge.tools.cli.main", "get_command"): "the lazy command group: a command's module is imported when the "
                                                   "command runs (its targets: test_lazy_commands_obey_the_layers)",
}


def imports_by_name(module: str, source: str) -> list[str]:
    """Every ``importlib.import_module`` / ``__import__`` call in ``source`` outside :data:`BY_NAME`."""
    tree = ast.parse(source)
    owner: dict[int, str] = {}
    for fn in ast.walk(tree):  # breadth first: a nested function's name overwrites its parent's
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            owner.update((id(n), fn.name) for n in ast.walk(fn))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "import_module") or \
                (isinstance(f, ast.Name) and f.id in ("import_module", "__import__")):
            where = (module, owner.get(id(node), "<module>"))
            if where not in BY_NAME:
                found.append(f"{module}:{node.lineno} imports a module by name in {where[1]} (only {sorted(BY_NAME)})")
    return found


def test_imports_run_one_way_and_none_hides_in_a_function():
    files = module_files()
    assert "gguf_forge.tools.cli.main" in files and "gguf_forge.convert.arch" in files
    known = set(files)
    found = []
    for module, path in sorted(files.items()):
        found += violations(module, path.read_text(encoding="utf-8"), path.name == "__init__.py", known)
        found += imports_by_name(module, path.read_text(encoding="utf-8"))
    assert not found, "\n".join(found)


def test_lazy_commands_obey_the_layers():
    """The lazy group imports ``tools/cli/<module>`` by name: every target is a module of the cli layer (so the
    import runs one way, as a statement in main.py would) that defines the command."""
    from gguf_forge.tools.cli.main import COMMANDS

    files = module_files()
    for name, target in COMMANDS.items():
        module, function = target.split(":")
        full = f"gguf_forge.tools.cli.{module}"
        assert full in files and layer(full) == ("cli", 7), target
        assert f"def {function}(" in files[full].read_text(encoding="utf-8"), target
    assert imports_by_name("gguf_forge.tools.cli.quant", "import importlib\ndef f():\n    importlib.import_module('x')\n")
    assert imports_by_name("gguf_forge.tools.cli.main", "def g():\n    __import__('gguf_forge.tools.serve')\n")


@pytest.mark.parametrize("module,source,words", [
    ("gguf_forge.files", "from .tools.cli import main\n", "layer core may not import layer cli"),
    ("gguf_forge.convert.converter", "from ..quant import quantize\n", "layer convert may not import layer quant"),
    ("gguf_forge.runtime", "import gguf_forge.tools.chat.session\n", "layer runtime may not import layer chat"),
    ("gguf_forge.tools.publish.publish", "from ..pipeline import run_pipeline\n",
     "layer publish may not import layer pipeline"),
    ("gguf_forge.quant.evaluate", "def f():\n    from ..convert import resolve_model\n", "inside a function"),
])
def test_the_checker_catches_a_wrong_import(module, source, words):
    known = set(module_files())
    found = violations(module, source, False, known)
    assert any(words in f for f in found), found


def test_a_lazy_third_party_import_is_allowed():
    known = set(module_files())
    assert violations("gguf_forge.quant.imatrix", "def f():\n    import torch  # heavy\n", False, known) == []
    assert violations("gguf_forge.tools.cli.main", "from ..pipeline import run_pipeline\n", False, known) == []
