"""Shared fixtures: cached Hugging Face checkpoints (see fixtures.py) and their converted GGUFs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from gguf_forge.convert import convert

sys.path.insert(0, str(Path(__file__).resolve().parent))
# fixtures are cached under $GGUF_FORGE_CACHE (default ~/.cache/gguf-forge), keyed by their inputs, so
# later runs on the same machine (and CI runs after a session) reuse them

from fixtures import fixture_dir  # noqa: E402


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.forge_passed = report.passed


@pytest.fixture(autouse=True)
def _free_disk_after_passing_tests(request):
    """A passing test's tmp_path is deleted at once (the suite writes GBs of GGUFs; CI disks can be small).

    pytest's own retention policy only deletes at the end of the session, so without this the peak is the sum
    of every test's files. A failing test's folder is kept for inspection."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None and getattr(request.node, "forge_passed", False):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


_converted: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def converted(gguf_dir):
    """converted(name, outtype) -> path of the fixture's GGUF (converted once per session)."""
    def get(name: str, outtype: str = "f32") -> Path:
        key = (name, outtype)
        if key not in _converted:
            out = gguf_dir / f"{name}-{outtype.upper()}.gguf"
            convert(fixture_dir(name), out, outtype=outtype, progress=False)
            _converted[key] = out
        return _converted[key]

    return get
