"""The control service as a child process, and workload identities bootstrapped from it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.control_plane.settings import CONTROL_START_TIMEOUT, MESHCTL, ROOT, TRUST_DOMAIN
from meshlib.identity.keys import build_csr, generate_private_key, private_key_pem
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import SVID, certificate_fingerprint, load_pem_certificates
from meshlib.identity.tls import build_client_context
from meshlib.runtime.agent import parse_token_fingerprint
from meshlib.runtime.control_client import ControlClient, fetch_bundle_unverified
from meshlib_control.cli import AdminClient


class ControlProcess:
    """``meshctl control serve`` on 127.0.0.1 (port chosen by the kernel) in *data_dir*."""

    def __init__(
        self,
        data_dir: Path,
        *,
        instance_ttl: str = "15m",
        profile_to: Path | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}.log"
        # With profile_to, the service runs under cProfile (written when it exits on SIGTERM).
        prefix = MESHCTL
        if profile_to is not None:
            prefix = [sys.executable, "-m", "cProfile", "-o", str(profile_to), *MESHCTL[1:]]
        self.args = [
            *prefix,
            "--data-dir",
            str(data_dir),
            "control",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--xds-listen",
            "127.0.0.1:0",
            "--instance-ttl",
            instance_ttl,
            *extra,  # e.g. --store etcd://… --ca-cert … --ca-key … for a replica
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.control_id = ""

    def start(self) -> None:
        """Start it and wait (bounded) until it printed its URL."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        deadline = time.monotonic() + CONTROL_START_TIMEOUT
        info = self.data_dir / "control.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control service exited: {self.output()[-2000:]}")
            if "ready at" in self.output() and info.exists():
                data = json.loads(info.read_text())
                self.url, self.control_id = data["url"], data["controlId"]
                return
            time.sleep(0.05)
        raise RuntimeError(f"control service not ready after {CONTROL_START_TIMEOUT}s")

    def output(self) -> str:
        """The process's log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the process so far (Linux /proc)."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; always reaps the child."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True, slots=True)
class Identity:
    """One workload SVID and the client TLS context built from it."""

    svid: SVID
    context: Any


async def bootstrap_identity(
    control: ControlProcess, admin: AdminClient, service: str, files_dir: Path
) -> Identity:
    """Get an SVID the way a workload's first start does: join token, pinned bundle, CSR."""
    answer = await asyncio.to_thread(
        admin.call, "POST", "/v1/admin/tokens", json={"service": service, "ttl": "1h"}
    )
    token = answer["token"]
    pinned = parse_token_fingerprint(token)
    bundle = await fetch_bundle_unverified(control.url)
    roots = [
        c
        for c in load_pem_certificates(bundle["bundle"].encode())
        if certificate_fingerprint(c) == pinned
    ]
    if not roots:
        raise RuntimeError("the control service does not hold the pinned CA")
    from cryptography.hazmat.primitives.serialization import Encoding

    ctx = build_client_context(None, roots[0].public_bytes(Encoding.PEM), files_dir)
    client = ControlClient(control.url, expected=control.control_id, tls=lambda: ctx)
    try:
        key = generate_private_key()
        spiffe_id = SpiffeId.for_service(TRUST_DOMAIN, "default", service)
        signed = await client.sign(build_csr(key, spiffe_id), token=token)
    finally:
        await client.aclose()
    svid = SVID.from_pem(
        signed["certificate"].encode(), private_key_pem(key), signed["bundle"].encode()
    )
    return Identity(svid, build_client_context(svid, svid.bundle_pem, files_dir))
