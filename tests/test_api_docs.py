"""The API reference (``make docs``, tools/api_docs.py with pdoc) builds without a warning.

The public modules are rendered into a tmp dir by the same script ``make docs`` runs; any
pdoc warning or cross-reference to a documented object that links nowhere fails the build.
A package with both faults shows that the build reports them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "api_docs.py"
BUDGET = 30.0


def _build(out: Path, *modules: str, pythonpath: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "-o", str(out), *modules],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUDGET * 2,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET, f"the API reference took {elapsed:.1f} s (budget {BUDGET:.0f} s)"
    return result


def test_public_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "api"
    result = _build(out)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    for page in ("meshlib", "meshlib/errors", "meshlib/policy", "meshlib/testing"):
        assert (out / f"{page}.html").is_file(), page
    integrations = sorted(p.stem for p in (ROOT / "meshlib" / "integrations").glob("*.py"))
    rendered = sorted(p.stem for p in (out / "meshlib" / "integrations").glob("*.html"))
    assert rendered == [name for name in integrations if name != "__init__"]
    top = (out / "meshlib.html").read_text(encoding="utf-8")
    # The server-side names meshlib imports on first use are documented, not dropped.
    for name in ("serve", "aserve", "MeshServer", "MeshMiddleware", "PeerInfo", "Mesh"):
        assert f'id="{name}"' in top, name
    testing = (out / "meshlib" / "testing.html").read_text(encoding="utf-8")
    assert '<a href="../meshlib.html#MeshServer">meshlib.MeshServer</a>' in testing


def test_build_reports_unresolved_exports_and_dead_references(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "badpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        '"""Returns a :class:`Helper` (documented in badpkg.sub, not here)."""\n'
        '__all__ = ["gone"]\n'
    )
    (pkg / "sub.py").write_text('"""Helpers."""\n\n\nclass Helper:\n    """A helper."""\n')
    result = _build(tmp_path / "api", "badpkg", "badpkg.sub", pythonpath=tmp_path / "src")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("api-docs warning:")]
    assert len(lines) == 2, result.stderr
    assert "Found 'gone' in badpkg.__all__, but it does not resolve" in lines[0]
    assert lines[1] == "api-docs warning: badpkg: :class:`Helper` links nowhere"
    assert "api-docs: 2 warning(s)" in result.stderr
    assert (tmp_path / "api" / "badpkg" / "sub.html").is_file()


def test_a_module_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    result = _build(tmp_path / "api", "meshlib.no_such_module")
    assert result.returncode == 1
    assert result.stderr == (
        "api-docs: cannot import a module to document: No module named 'meshlib.no_such_module'\n"
    )
    assert not (tmp_path / "api").exists()
