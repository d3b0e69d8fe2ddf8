"""A real etcd cluster on 127.0.0.1 for tests: Debian's ``etcd-server`` (``/usr/bin/etcd``).

``EtcdCluster(tmp_path, members=3).start()`` starts the members (client URLs over TLS with
client certificates when given ``tls=EtcdTLS.create(dir)``) with free ports, their own
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
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

__all__ = ["ETCD", "EtcdCluster", "EtcdTLS", "require_etcd"]

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


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """A test CA, the members' serving certificate (127.0.0.1) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path) -> EtcdTLS:
        """Write the files into *directory* (the keys 0600)."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)

        def name(text: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

        def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
            (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path = directory / f"{stem}.key"
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            key_path.chmod(0o600)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("etcd test CA"))
            .issuer_name(name("etcd test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        write("ca", ca, ca_key)

        def leaf(stem: str, server: bool) -> None:
            key = ec.generate_private_key(ec.SECP256R1())
            # etcd 3.4's gateway dials its own member with the serving certificate, so that
            # one must be good for client authentication too.
            usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = (
                x509.CertificateBuilder()
                .subject_name(name(f"etcd test {stem}"))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=1))
            )
            if server:
                usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
                builder = builder.add_extension(
                    x509.SubjectAlternativeName(
                        [
                            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                            x509.DNSName("localhost"),
                        ]
                    ),
                    critical=False,
                )
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            write(stem, builder.sign(ca_key, hashes.SHA256()), key)

        leaf("server", server=True)
        leaf("client", server=False)
        return cls(
            ca=directory / "ca.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
            client_cert=directory / "client.pem",
            client_key=directory / "client.key",
        )

    def client_context(self, *, with_cert: bool = True) -> ssl.SSLContext:
        """A client TLS context trusting the test CA (and presenting the client cert)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class EtcdCluster:
    """*members* etcd processes forming one cluster; each member is an index 0..n-1."""

    def __init__(self, root: Path, members: int = 3, *, tls: EtcdTLS | None = None) -> None:
        self.binary = require_etcd()
        self.root = root
        self.tls = tls
        self.scheme = "https" if tls else "http"
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
        return [f"{self.scheme}://127.0.0.1:{port}" for port in self.client_ports]

    @property
    def store_url(self) -> str:
        """The ``--store`` value naming every member: ``etcd://127.0.0.1:A,127.0.0.1:B,…``
        (``etcds://…?ca=…&cert=…&key=…`` with TLS)."""
        members = ",".join(f"127.0.0.1:{port}" for port in self.client_ports)
        if self.tls is None:
            return f"etcd://{members}"
        tls = self.tls
        return f"etcds://{members}?ca={tls.ca}&cert={tls.client_cert}&key={tls.client_key}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every member's ``host:port`` (what EtcdStore takes)."""
        return tuple(f"127.0.0.1:{port}" for port in self.client_ports)

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
            *self._tls_args(),
            "--log-level",
            "error",
            "--logger",
            "zap",
        ]

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--cert-file",
            str(self.tls.server_cert),
            "--key-file",
            str(self.tls.server_key),
            "--trusted-ca-file",
            str(self.tls.ca),
            "--client-cert-auth",
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
            verify: ssl.SSLContext | bool = self.tls.client_context() if self.tls else True
            reply = httpx.get(f"{self.client_urls[i]}/health", timeout=1.0, verify=verify)
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
