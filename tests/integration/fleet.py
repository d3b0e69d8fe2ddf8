"""A module-scoped set of real processes: control service, instances, admin client, callers.

The resilience test modules share one control service and a handful of backend instances
per module (start-up is mostly imports, so instances start together); policies are applied
through the admin API, the same one `meshctl apply` uses.
"""

from __future__ import annotations

import itertools
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import meshlib
from meshlib_control.cli import AdminClient
from tests.integration.harness import Control, Service


class FleetBase:
    """Control service, admin client, instances and in-process meshes of one test module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The default 15 s lease: leases close to the heartbeat interval make live instances
        # lapse for a moment and drop out of snapshots (a flake).
        self.control = Control(root / "control")
        self.control.start()
        self.admin = AdminClient(self.control.data_dir)
        self.instances: dict[str, Service] = {}
        self.meshes: list[meshlib.Mesh] = []
        self._names = itertools.count()

    def token(self, service: str, uses: int) -> str:
        body = {"service": service, "namespace": "default", "ttl": "1h", "uses": uses}
        return str(self.admin.call("POST", "/v1/admin/tokens", json=body)["token"])

    def new_mesh(
        self, service: str, token: str, labels: dict[str, str] | None = None
    ) -> meshlib.Mesh:
        mesh = meshlib.Mesh(
            service=service,
            control_url=self.control.url,
            token=token,
            data_dir=self.root / f"{service}-{next(self._names)}",
            labels=labels,
            start_timeout=20,
        )
        self.meshes.append(mesh)
        return mesh.start()

    def apply(self, text: str) -> None:
        self.admin.call(
            "POST",
            "/v1/admin/resources",
            content=text.encode(),
            headers={"content-type": "application/yaml"},
        )

    def close(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(meshlib.Mesh.close, self.meshes))
        for instance in self.instances.values():  # SIGTERM all at once, then wait for each
            if instance.process.alive():
                assert instance.process.proc is not None
                instance.process.proc.terminate()
        for instance in self.instances.values():
            if instance.process.proc is not None:
                try:
                    instance.process.proc.wait(10)
                except subprocess.TimeoutExpired:
                    instance.process.proc.kill()
                    instance.process.proc.wait(5)
        self.admin.close()
        self.control.stop()
