"""Part 0: what ``import meshlib`` costs an HTTP-only service, in a fresh interpreter.

Issue 12 asks that ``import meshlib`` import no gRPC, no YAML parser and no control-service
code. A child interpreter (nothing imported yet but what Python itself loads) records
``sys.modules`` and its VmRSS before ``import meshlib``, after it, and after constructing a
``meshlib.Mesh(...)`` without starting it; an import hook notes, for each watched package,
the innermost meshlib module on the stack when it was first imported and the module whose
import statement asked for it (``via``: a third party when meshlib pulls it indirectly),
so a finding says where to cut. ``import httpx`` alone, in another fresh interpreter, is
the baseline: an HTTP-only service pays for it anyway.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks.micro.settings import ROOT

__all__ = ["FORBIDDEN", "WATCHED", "measure_imports"]

# What issue 12 rules out of ``import meshlib`` for an HTTP-only service.
FORBIDDEN = ("grpc", "google.protobuf", "yaml", "ruamel", "meshlib_control")
# Also watched: frameworks and SDKs a service may not use, and CLI-only libraries.
WATCHED = (
    *FORBIDDEN,
    "fastapi",
    "starlette",
    "uvicorn",
    "opentelemetry.sdk",
    "prometheus_client",
    "pydantic",
    "click",
    "rich",
    "pygments",
)
TIMEOUT = 60.0

# Run with ``python -c``: argv[1] is "mesh" or "httpx", argv[2] the watched names, argv[3]
# a scratch data directory. Prints one JSON object.
_CHILD = r"""
import json, sys, time
kind, watched, data_dir = sys.argv[1], sys.argv[2].split(","), sys.argv[3]

def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def matching(name):
    for w in watched:
        if name == w or name.startswith(w + "."):
            return w
    return None

first_importer = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        w = matching(name)
        if w is not None and w not in first_importer:
            frame, who, via = sys._getframe(1), None, None
            while frame is not None and who is None:
                module = frame.f_globals.get("__name__", "")
                if via is None and not module.startswith(("importlib", "<")):
                    via = module
                if module.split(".")[0] == "meshlib":
                    who = module
                frame = frame.f_back
            first_importer[w] = {"meshlib": who, "via": via}
        return None

def present():
    return sorted({w for w in map(matching, list(sys.modules)) if w is not None})

sys.meta_path.insert(0, Watch())
out = {"modules_at_start": len(sys.modules), "rss_kib_at_start": rss_kib()}
start = time.perf_counter()
try:
    if kind == "httpx":
        import httpx
    else:
        import meshlib
    out["import_s"] = time.perf_counter() - start
    out["modules_after_import"] = len(sys.modules)
    out["rss_kib_after_import"] = rss_kib()
    out["watched_after_import"] = present()
    out["meshlib_modules_after_import"] = sum(
        1 for m in sys.modules if m.split(".")[0] == "meshlib"
    )
    if kind == "mesh":
        start = time.perf_counter()
        meshlib.Mesh(
            service="footprint", control_url="https://127.0.0.1:9", token="unused",
            data_dir=data_dir, admin_port=None,
        )
        out["construct_s"] = time.perf_counter() - start
        out["modules_after_construct"] = len(sys.modules)
        out["rss_kib_after_construct"] = rss_kib()
        out["watched_after_construct"] = present()
except Exception as exc:  # recorded: the library may be mid-change
    out["error"] = f"{type(exc).__name__}: {exc}"
out["first_importer"] = first_importer
print(json.dumps(out))
"""


def _child(kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshlib-imports-") as data_dir:
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, kind, ",".join(WATCHED), data_dir],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    if result.returncode != 0 or not result.stdout.strip():
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-2000:]}"}
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def _mib(after: int | None, before: int | None) -> float | None:
    return None if after is None or before is None else (after - before) / 1024.0


def measure_imports() -> dict[str, Any]:
    """``import meshlib`` and ``Mesh(...)`` in a fresh interpreter, beside ``import httpx``.

    Returns:
        ``mesh`` and ``httpx``: the children's raw records; ``forbidden_after_import`` and
        ``forbidden_after_construct``: which of :data:`FORBIDDEN` were loaded;
        ``rss_import_mib`` / ``rss_construct_mib``: the VmRSS grown by each step, and
        ``rss_over_httpx_mib``: the import's growth beyond ``import httpx``'s.
    """
    mesh, bare = _child("mesh"), _child("httpx")
    out: dict[str, Any] = {"watched": list(WATCHED), "forbidden": list(FORBIDDEN)}
    out["mesh"], out["httpx"] = mesh, bare
    for step in ("import", "construct"):
        loaded = mesh.get(f"watched_after_{step}")
        out[f"forbidden_after_{step}"] = (
            None if loaded is None else [w for w in loaded if w in FORBIDDEN]
        )
    out["rss_import_mib"] = _mib(mesh.get("rss_kib_after_import"), mesh.get("rss_kib_at_start"))
    out["rss_construct_mib"] = _mib(
        mesh.get("rss_kib_after_construct"), mesh.get("rss_kib_after_import")
    )
    httpx_mib = _mib(bare.get("rss_kib_after_import"), bare.get("rss_kib_at_start"))
    out["rss_httpx_import_mib"] = httpx_mib
    out["rss_over_httpx_mib"] = (
        None if out["rss_import_mib"] is None or httpx_mib is None
        else out["rss_import_mib"] - httpx_mib
    )  # fmt: skip
    return out
