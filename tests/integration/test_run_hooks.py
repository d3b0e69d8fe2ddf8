"""meshlib.run.hooks: a patch runs once, right after the module executes, before importers."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from meshlib.run import hooks


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"h8pkg_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "server.py").write_text("def serve():\n    return 'plain'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_a_patch_runs_before_the_importer_gets_the_module(package: str) -> None:
    calls: list[str] = []

    def patch(module: ModuleType) -> None:
        calls.append(module.__name__)
        module.serve = lambda: "meshed"  # type: ignore[attr-defined]

    hooks.when_imported(f"{package}.server", patch)
    namespace: dict[str, object] = {}
    exec(f"from {package}.server import serve", namespace)  # the importer's own binding
    assert namespace["serve"]() == "meshed"  # type: ignore[operator]
    assert calls == [f"{package}.server"]
    exec(f"import {package}.server", {})  # imported again: not patched twice
    assert calls == [f"{package}.server"]
    # The module keeps working as a module (its loader answers the usual questions).
    assert sys.modules[f"{package}.server"].__spec__ is not None


def test_an_imported_module_is_patched_at_once(package: str) -> None:
    exec(f"import {package}.server", {})
    seen: list[str] = []
    hooks.when_imported(f"{package}.server", lambda m: seen.append(m.__name__))
    assert seen == [f"{package}.server"]
