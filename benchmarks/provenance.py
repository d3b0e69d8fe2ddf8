"""What a run was measured on and from: the machine, and the commit of the library."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from typing import Any

from benchmarks.processes import ROOT

__all__ = ["machine_info", "source_state"]


def source_state() -> dict[str, Any]:
    """The commit measured, and whether the library's files differ from it (provenance)."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
        )
        return result.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "library_tree": git("rev-parse", "HEAD:meshlib", "HEAD:meshlib_control"),
        "library_changes": git("status", "--porcelain", "--", "meshlib", "meshlib_control"),
        "at": datetime.now(UTC).isoformat(),
    }


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    envoy_version = None
    from meshlib_control.xds.static import envoy_binary

    envoy = envoy_binary()
    if envoy is not None:
        out = subprocess.run([str(envoy), "--version"], capture_output=True, text=True, check=False)
        envoy_version = out.stdout.strip().split("version:")[-1].strip()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy_version,
        "loadavg_at_start": os.getloadavg(),
    }
