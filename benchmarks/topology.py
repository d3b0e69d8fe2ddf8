"""Processes of one benchmark topology: load generator -> frontend -> backend, on 127.0.0.1.

Only the frontend -> backend hop differs between modes (:data:`MODES`, in
:mod:`benchmarks.modes`). The processes themselves are :mod:`benchmarks.processes`'
children, the control service :mod:`benchmarks.control_service`'s; this module starts
one mode's apps and sidecars and says where to send load and what to measure. It also
re-exports the names it held before those modules were split from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks.certs import make_tls_files
from benchmarks.control_service import Control
from benchmarks.modes import MODES, Mode
from benchmarks.processes import (
    PYTHON,
    READY_TIMEOUT,
    ROOT,
    Child,
    Fleet,
    free_port,
    process_tree,
    rss_kib,
    wait_for,
)

__all__ = [
    "MODES",
    "ROOT",
    "Control",
    "Fleet",
    "Mode",
    "Topology",
    "free_port",
    "process_tree",
    "rss_kib",
    "start_topology",
]


@dataclass
class Topology:
    """The running processes of one mode: where to send load and what to measure."""

    mode: Mode
    url: str
    backend_url: str | None
    instances: dict[str, list[Child]]  # "frontend"/"backend" -> app (+ sidecar agent)
    stats_files: dict[str, Path]
    direct: dict[str, Any] | None = None  # the sequential caller's one-hop target (HTTP)

    def pids(self) -> dict[str, list[int]]:
        """Every pid of each instance, sidecar agents' Envoy children included."""
        return {
            name: [pid for child in children for pid in process_tree(child.popen.pid)]
            for name, children in self.instances.items()
        }

    def sidecar_pids(self) -> list[int]:
        return [
            pid
            for children in self.instances.values()
            for child in children
            if child.name.endswith("-sidecar")
            for pid in process_tree(child.popen.pid)
        ]

    def children(self) -> list[Child]:
        return [child for children in self.instances.values() for child in children]


def _says_ready(child: Child) -> bool:
    return "sidecar ready" in child.output()


def _frontend_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def launch_sidecar(
    fleet: Fleet,
    control: Control,
    name: str,
    service: str,
    *,
    app_port: int,
    inbound_port: int,
    outbound_port: int,
    data_dir: Path,
) -> Child:
    """Mode (d)'s sidecar: ``meshctl sidecar`` (agent + Envoy child) for one plain app."""
    return fleet.spawn(
        name,
        [
            PYTHON, "-m", "meshlib_control.cli", "--control", control.url, "sidecar",
            "--service", service, "--app-port", str(app_port),
            "--inbound-port", str(inbound_port), "--outbound-port", str(outbound_port),
            "--admin-port", "0", "--envoy-admin-port", str(free_port()),
            "--token", control.tokens[service], "--sidecar-data-dir", str(data_dir),
        ],
    )  # fmt: skip


def _launchers(mode: Mode) -> tuple[list[str], list[str]]:
    """Mode ``run``: ``python -m meshlib.run`` before each app (the frontend's server stays
    plain, ``--clients-only``: the load generator is outside the mesh); others: nothing."""
    if mode.app_mode != "run":
        return [], []
    front, back = mode.services
    launcher = [PYTHON, "-m", "meshlib.run"]
    return (
        [*launcher, "--service", back, "--"],
        [*launcher, "--service", front, "--clients-only", "--"],
    )


def start_topology(fleet: Fleet, control: Control | None, mode: Mode, run_dir: Path) -> Topology:
    """Start backend, frontend (and sidecars) for *mode*; return once ``/call`` answers.

    On any failure the processes started so far are stopped before the error propagates.
    """
    before = list(fleet.children)
    try:
        return _start_topology(fleet, control, mode, run_dir)
    except BaseException:
        fleet.stop([child for child in fleet.children if child not in before])
        raise


def _start_topology(fleet: Fleet, control: Control | None, mode: Mode, run_dir: Path) -> Topology:
    run_dir.mkdir(parents=True, exist_ok=True)
    front_service, back_service = mode.services
    front_port, back_port = free_port(), free_port()
    stats = {"frontend": run_dir / "frontend-stats.json", "backend": run_dir / "backend-stats.json"}
    common = ["--protocol", mode.protocol]
    back_env: dict[str, str] = {"BENCH_STATS_FILE": str(stats["backend"])}
    front_env: dict[str, str] = {"BENCH_STATS_FILE": str(stats["frontend"])}
    if mode.app_mode == "tls":
        make_tls_files(run_dir / "tls")
        common += ["--tls-dir", str(run_dir / "tls")]
    if mode.meshed:
        assert control is not None
        back_env |= control.mesh_env(back_service, run_dir / "backend-mesh")
        front_env |= control.mesh_env(front_service, run_dir / "frontend-mesh", back_service)
    upstream = back_port
    sidecars: dict[str, Child] = {}
    if mode.sidecar:
        assert control is not None
        outbound = free_port()
        sidecars["backend"] = launch_sidecar(
            fleet, control, f"{mode.id}-backend-sidecar", back_service,
            app_port=back_port, inbound_port=free_port(), outbound_port=free_port(),
            data_dir=run_dir / "backend-sidecar",
        )  # fmt: skip
        sidecars["frontend"] = launch_sidecar(
            fleet, control, f"{mode.id}-frontend-sidecar", front_service,
            app_port=front_port, inbound_port=free_port(), outbound_port=outbound,
            data_dir=run_dir / "frontend-sidecar",
        )  # fmt: skip
        upstream = outbound
    back_run, front_run = _launchers(mode)
    backend = fleet.spawn(
        f"{mode.id}-backend",
        [*back_run, PYTHON, "-m", "benchmarks.apps.backend", "--mode", mode.app_mode,
         "--port", str(back_port), *common],
        back_env,
    )  # fmt: skip
    frontend = fleet.spawn(
        f"{mode.id}-frontend",
        [*front_run, PYTHON, "-m", "benchmarks.apps.frontend", "--mode", mode.app_mode,
         "--port", str(front_port), "--upstream", str(upstream), "--service", back_service,
         *common],
        front_env,
    )  # fmt: skip
    instances = {
        "frontend": [frontend, *([sidecars["frontend"]] if sidecars else [])],
        "backend": [backend, *([sidecars["backend"]] if sidecars else [])],
    }
    everyone = [c for cs in instances.values() for c in cs]
    for child in sidecars.values():
        wait_for(partial(_says_ready, child), READY_TIMEOUT, f"{child.name} ready", everyone)
    url = f"http://127.0.0.1:{front_port}/call"
    wait_for(lambda: _frontend_ok(url), READY_TIMEOUT, f"{mode.id}: {url} answering 200", everyone)
    for _ in range(3):  # every connection and snapshot in place, not just the first
        wait_for(lambda: _frontend_ok(url), 10, f"{mode.id}: {url} answering 200 again", everyone)
    backend_url = (
        f"http://127.0.0.1:{back_port}/work"
        if mode.app_mode in ("plain", "app") and mode.protocol == "http"
        else None
    )
    direct: dict[str, Any] | None = None
    if mode.protocol == "http":
        direct = {"url": f"http://127.0.0.1:{back_port}/work"}
        if mode.app_mode == "tls":
            direct = {
                "url": f"https://127.0.0.1:{back_port}/work",
                "tls_dir": str(run_dir / "tls"),
            }
        elif mode.meshed:
            assert control is not None
            direct = {
                "url": f"http://{back_service}/work",
                "mesh": {
                    "service": front_service,
                    "control_url": control.url,
                    "token": control.tokens[front_service],
                    "data_dir": str(run_dir / "direct-mesh"),
                    "traced": mode.app_mode == "traced",
                },
            }
        elif mode.sidecar:
            direct = {"url": f"http://127.0.0.1:{upstream}/work", "host": back_service}
    return Topology(mode, url, backend_url, instances, stats, direct)
