"""The benchmark's control service: ``meshctl control serve``, its policy and tokens."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.modes import Mode
from benchmarks.processes import PYTHON, READY_TIMEOUT, Child, Fleet, free_port, wait_for

__all__ = ["PEER_AUTHENTICATION", "Control"]

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
        wait_for(
            lambda: "ready at" in child.output(), READY_TIMEOUT, "the control service", [child]
        )
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
