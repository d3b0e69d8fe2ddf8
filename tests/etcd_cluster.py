"""A real etcd cluster on 127.0.0.1 for tests: Debian's ``etcd-server`` (``/usr/bin/etcd``).

``EtcdCluster(tmp_path, members=3).start()`` starts the members with free ports, their own
data dirs and fast election timeouts, and waits (bounded) until the cluster has a leader.
``client_urls``/``store_url`` say where to connect; ``kill(i)``, ``stop_member(i)`` and
``start_member(i)`` drive faults; ``stop()`` ends every member. Tests that need it skip
(and fail under CI, see tests/conftest.py) when no etcd binary is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

__all__ = ["ETCD", "EtcdCluster", "require_etcd"]

ETCD = os.environ.get("MESH_TEST_ETCD", "/usr/bin/etcd")
START_TIMEOUT = 20.0


def require_etcd() -> str:
    """The etcd binary, or skip naming what is missing (a failure under CI)."""
    path = ETCD if os.path.exists(ETCD) else shutil.which("etcd")
    if path is None:
        pytest.skip(f"etcd not installed ({ETCD}; make system-deps installs etcd-server)")
    return path


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


class EtcdCluster:
    """*members* etcd processes forming one cluster; each member is an index 0..n-1."""

    def __init__(self, root: Path, members: int = 3) -> None:
        self.binary = require_etcd()
        self.root = root
        ports = _free_ports(2 * members)
        self.client_ports = ports[:members]
        self.peer_ports = ports[members:]
        self.names = [f"m{i}" for i in range(members)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * members
        self._started = [False] * members
        self.initial_cluster = ",".join(
            f"{name}=http://127.0.0.1:{port}"
            for name, port in zip(self.names, self.peer_ports, strict=True)
        )

    @property
    def client_urls(self) -> list[str]:
        """Every member's client URL (``http://127.0.0.1:PORT``)."""
        return [f"http://127.0.0.1:{port}" for port in self.client_ports]

    @property
    def store_url(self) -> str:
        """The ``--store`` value naming every member: ``etcd://127.0.0.1:A,127.0.0.1:B,…``."""
        return "etcd://" + ",".join(f"127.0.0.1:{port}" for port in self.client_ports)

    def _args(self, i: int) -> list[str]:
        data = self.root / f"etcd-{self.names[i]}"
        state = "existing" if self._started[i] else "new"
        return [
            self.binary,
            "--name",
            self.names[i],
            "--data-dir",
            str(data),
            "--listen-client-urls",
            self.client_urls[i],
            "--advertise-client-urls",
            self.client_urls[i],
            "--listen-peer-urls",
            f"http://127.0.0.1:{self.peer_ports[i]}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{self.peer_ports[i]}",
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            f"meshlib-test-{self.peer_ports[0]}",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "error",
            "--logger",
            "zap",
        ]

    def start_member(self, i: int) -> None:
        """Start (or restart, with its data) member *i*; does not wait."""
        if self.processes[i] is not None and self.processes[i].poll() is None:  # type: ignore[union-attr]
            return
        log = open(self.root / f"etcd-{self.names[i]}.log", "ab")  # noqa: SIM115
        self.processes[i] = subprocess.Popen(
            self._args(i), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._started[i] = True

    def start(self) -> EtcdCluster:
        """Start every member and wait until the cluster answers writes."""
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.names)):
            self.start_member(i)
        self.wait_healthy()
        return self

    def healthy(self, i: int) -> bool:
        """True when member *i* reports a leader and answers (``/health``)."""
        try:
            reply = httpx.get(f"{self.client_urls[i]}/health", timeout=1.0)
            return reply.status_code == 200 and reply.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def wait_healthy(
        self, members: list[int] | None = None, timeout: float = START_TIMEOUT
    ) -> None:
        """Wait (bounded) until each of *members* (default: the running ones) is healthy."""
        running = [i for i in range(len(self.names)) if self.alive(i)]
        wanted = members if members is not None else running
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.healthy(i) for i in wanted):
                return
            for i in wanted:
                proc = self.processes[i]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"etcd member {self.names[i]} exited:\n{self.log(i)}")
            time.sleep(0.1)
        raise TimeoutError(f"etcd members {wanted} not healthy after {timeout}s:\n{self.log(0)}")

    def alive(self, i: int) -> bool:
        """True while member *i*'s process runs."""
        proc = self.processes[i]
        return proc is not None and proc.poll() is None

    def kill(self, i: int) -> None:
        """SIGKILL member *i* (its data dir stays, so it can be restarted)."""
        proc = self.processes[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop_member(self, i: int) -> None:
        """Stop member *i* with SIGTERM (SIGKILL after 5 s)."""
        proc = self.processes[i]
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop every member."""
        for i in range(len(self.names)):
            self.stop_member(i)

    def log(self, i: int) -> str:
        """The tail of member *i*'s log."""
        path = self.root / f"etcd-{self.names[i]}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
