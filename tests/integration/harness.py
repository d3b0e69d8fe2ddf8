"""Real processes for the integration tests: the control service and meshed services.

Everything listens on 127.0.0.1 with ports picked free by the kernel; every wait is
bounded and fails the test with the process's log when it runs out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

MESHCTL = [sys.executable, "-m", "meshlib_control.cli"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll *predicate* until truthy, at most *timeout* seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Process:
    """A child process with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
            cwd=ROOT,
        )
        out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM without waiting (see :func:`stop_all`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Control:
    """``meshctl control serve`` in a subprocess, restartable on the same dir and port."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        args = [
            *MESHCTL,
            "--data-dir",
            str(data_dir),
            "control",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            *extra,
        ]
        self.process = Process(args, data_dir.parent / f"control-{self.port}.log")

    def start(self) -> None:
        seen = len(self.process.output())
        self.process.start()
        wait_for(
            lambda: "ready at" in self.process.output()[seen:] or not self.process.alive(),
            40,
            "control service",
        )
        assert self.process.alive(), self.process.output()

    def stop(self) -> None:
        self.process.stop()

    def meshctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MESHCTL, "--data-dir", str(self.data_dir), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.meshctl(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def token(self, service: str, *extra: str) -> str:
        return self.ok("token", "create", "--service", service, *extra).strip()

    def apply(self, text: str) -> str:
        return self.ok("apply", "-f", "-", stdin=text)

    def instances(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("get", "instances", "-o", "json")))

    def wait_serving(self, service: str, count: int = 1, timeout: float = 20) -> None:
        wait_for(
            lambda: (
                len([i for i in self.instances() if i["service"] == service and i["port"]]) >= count
            ),
            timeout,
            f"{count} instance(s) of {service}",
            interval=0.3,
        )


class Service:
    """One meshed instance of an app module (``tests/integration/echo_app.py`` by default).

    *app* is the module run with ``python -m``; *env* adds variables to its environment.
    """

    def __init__(
        self,
        control: Control,
        service: str,
        workdir: Path,
        *,
        labels: str = "",
        plaintext: bool = False,
        port: int | None = None,
        data_dir: Path | None = None,
        token: str | None = None,
        app: str = "tests.integration.echo_app",
        env: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.port = port or free_port()
        self.plaintext_port = free_port() if plaintext else None
        self.data_dir = data_dir or workdir / f"svc-{service}-{self.port}"
        environ = {
            "MESH_CONTROL_URL": control.url,
            "MESH_SERVICE": service,
            "MESH_TOKEN": control.token(service) if token is None else token,
            "MESH_DATA_DIR": str(self.data_dir),
            "MESH_LABELS": labels,
            "PORT": str(self.port),
        }
        if self.plaintext_port:
            environ["PLAINTEXT_PORT"] = str(self.plaintext_port)
        self.process = Process(
            [sys.executable, "-m", app],
            workdir / f"{service}-{self.port}.log",
            {**environ, **(env or {})},
        )

    def start(self, wait: bool = True) -> Service:
        self.process.start()
        if wait:
            wait_for(self._listening, 30, f"{self.service} listening")
        return self

    def _listening(self) -> bool:
        assert self.process.alive(), self.process.output()
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.process.stop()

    def plain_get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.plaintext_port}{path}", timeout=5)


def stop_all(processes: list[Process], timeout: float = 10.0) -> None:
    """SIGTERM every process at once, then wait for each (kill after *timeout*)."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop(timeout)


def wait_endpoints(mesh: Any, service: str, count: int = 1, timeout: float = 15) -> None:
    """Wait until *mesh*'s active snapshot lists *count* endpoints of *service*."""

    def ready() -> bool:
        entry = mesh.engine.resolve(service)
        return entry is not None and len(entry.endpoints) >= count

    wait_for(ready, timeout, f"{count} endpoint(s) of {service} in the snapshot")
