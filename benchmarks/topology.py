"""Processes of one benchmark topology: load generator -> frontend -> backend, on 127.0.0.1.

Only the frontend -> backend hop differs between modes (:data:`MODES`). Every child is
started from the harness's main thread with ``PR_SET_PDEATHSIG`` set, so a harness killed
outright takes its children with it; :class:`Fleet` stops the rest (SIGTERM, then SIGKILL)
in a ``finally`` and at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks.certs import make_tls_files

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

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PR_SET_PDEATHSIG = 1
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 8.0
GRPC_METHOD = "/meshlib.demo.inventory.v1.Inventory/GetItem"


@dataclass(frozen=True, slots=True)
class Mode:
    """One way of making the frontend -> backend hop."""

    key: str  # the letter: a plain, b tls, c library, d sidecar, e library+tracing
    label: str
    protocol: str  # "http" or "grpc"
    app_mode: str  # what benchmarks.apps run as (see benchmarks/apps/common.py)

    @property
    def id(self) -> str:
        return f"{self.protocol}-{self.key}"

    @property
    def sidecar(self) -> bool:
        return self.app_mode == "app"

    @property
    def meshed(self) -> bool:
        return self.app_mode in ("mesh", "traced")

    @property
    def services(self) -> tuple[str, str]:
        """(frontend, backend) service names in the mesh: distinct per mode, so an instance
        still deregistering from one mode never appears in the next one's snapshot."""
        return f"frontend-{self.protocol}-{self.key}", f"backend-{self.protocol}-{self.key}"

    def policy(self) -> str:
        """The mode's AuthorizationPolicy: the backend admits its frontend only, for /work."""
        front, back = self.services
        to = (
            f'{{methods: [POST], paths: ["{GRPC_METHOD}"]}}'
            if self.protocol == "grpc"
            else "{methods: [GET], paths: [/work]}"
        )
        return (
            "apiVersion: meshlib.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {back}-allow-{front}}}\n"
            f"spec:\n  service: {back}\n  action: ALLOW\n  rules:\n"
            f'  - from: {{principals: ["spiffe://mesh.local/ns/default/sa/{front}"]}}\n'
            f"    to: {to}\n"
        )


_LABELS = {
    "a": ("plain", "plain"),
    "b": ("direct mTLS", "tls"),
    "c": ("meshlib library", "mesh"),
    "d": ("Envoy sidecar pair", "app"),
    "e": ("library + tracing", "traced"),
}

MODES: dict[str, Mode] = {
    f"{protocol}-{key}": Mode(key, label, protocol, app_mode)
    for protocol in ("http", "grpc")
    for key, (label, app_mode) in _LABELS.items()
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL it when the harness thread dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    terminated: bool = False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Fleet:
    """Every process the harness started; :meth:`stop_all` ends them, however we got there."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        atexit.register(self.stop_all)

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=ROOT,
                preexec_fn=_die_with_parent,  # the harness spawns from its one thread
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def terminate(self, children: Sequence[Child]) -> None:
        """SIGTERM *children* (once each) without waiting."""
        for child in children:
            if child.alive() and not child.terminated:
                child.terminated = True
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)

    def stop(self, children: Sequence[Child]) -> None:
        """SIGTERM *children* together, wait for all, SIGKILL what is left."""
        self.terminate(children)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in children:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(5)
        for child in children:
            if child in self.children:
                self.children.remove(child)

    def stop_all(self) -> None:
        self.stop(list(self.children))


def process_tree(root: int) -> list[int]:
    """*root* and all its descendants (from ``/proc/*/stat``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, ()))
    return out


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of one process in KiB; (0, 0) once it is gone."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    return rss, pss


def _wait(predicate: Callable[[], Any], timeout: float, what: str, logs: Sequence[Child]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in logs:
            if not child.alive():
                raise RuntimeError(
                    f"{child.name} exited while waiting for {what}:\n{child.output()[-3000:]}"
                )
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(f"--- {c.name}\n{c.output()[-1500:]}" for c in logs)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}\n{tails}")


PEER_AUTHENTICATION = """apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: default-strict}
spec: {mode: STRICT}
"""


class Control:
    """``meshctl control serve`` with ADS on, the benchmark's policy and reusable tokens."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.data_dir = fleet.workdir / "control"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.tokens: dict[str, str] = {}
        self.child: Child | None = None

    def meshctl(self, *args: str, stdin: str | None = None) -> str:
        """Run ``meshctl --data-dir DIR ARGS`` in this process (its CLI code, no interpreter
        start per call: ten token commands cost ten seconds of CPU as subprocesses)."""
        from meshlib_control.cli import main as meshctl_main

        out = io.StringIO()
        err = io.StringIO()
        old_stdin = sys.stdin
        try:
            sys.stdin = io.StringIO(stdin or "")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = meshctl_main(["--data-dir", str(self.data_dir), *args])
        finally:
            sys.stdin = old_stdin
        if status:
            raise RuntimeError(f"meshctl {' '.join(args)} failed ({status}): {err.getvalue()}")
        return out.getvalue()

    def start(self, modes: Sequence[Mode]) -> None:
        """Start, apply STRICT mTLS and each mode's policy, and make one token per service."""
        services = list(dict.fromkeys(s for m in modes for s in m.services))
        self.child = self.fleet.spawn(
            "control",
            [
                PYTHON, "-m", "meshlib_control.cli", "--data-dir", str(self.data_dir),
                "control", "serve", "--listen", f"127.0.0.1:{self.port}",
                "--xds-listen", f"127.0.0.1:{free_port()}",
            ],
        )  # fmt: skip
        child = self.child
        _wait(lambda: "ready at" in child.output(), READY_TIMEOUT, "the control service", [child])
        policy = "---\n".join([PEER_AUTHENTICATION, *(m.policy() for m in modes)])
        self.meshctl("apply", "-f", "-", stdin=policy)
        for service in services:
            self.tokens[service] = self.meshctl(
                "token", "create", "--service", service, "--ttl", "3h", "--uses", "10000"
            ).strip()

    def mesh_env(self, service: str, data_dir: Path, dependencies: str = "") -> dict[str, str]:
        env = {
            "MESH_CONTROL_URL": self.url,
            "MESH_SERVICE": service,
            "MESH_TOKEN": self.tokens[service],
            "MESH_DATA_DIR": str(data_dir),
            "MESH_ADMIN_PORT": "0",
        }
        if dependencies:
            env["MESH_DEPENDENCIES"] = dependencies
        return env


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
    backend = fleet.spawn(
        f"{mode.id}-backend",
        [PYTHON, "-m", "benchmarks.apps.backend", "--mode", mode.app_mode,
         "--port", str(back_port), *common],
        back_env,
    )  # fmt: skip
    frontend = fleet.spawn(
        f"{mode.id}-frontend",
        [PYTHON, "-m", "benchmarks.apps.frontend", "--mode", mode.app_mode,
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
        _wait(partial(_says_ready, child), READY_TIMEOUT, f"{child.name} ready", everyone)
    url = f"http://127.0.0.1:{front_port}/call"
    _wait(lambda: _frontend_ok(url), READY_TIMEOUT, f"{mode.id}: {url} answering 200", everyone)
    for _ in range(3):  # every connection and snapshot in place, not just the first
        _wait(lambda: _frontend_ok(url), 10, f"{mode.id}: {url} answering 200 again", everyone)
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
