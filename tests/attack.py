"""Hostile certificates for regression tests, minted as an attacker with the CA key would.

A mesh that plugs in a corporate CA trusts every certificate that CA signs. Whoever can get
that CA to sign (or holds its key) can mint leaves the SPIFFE X.509-SVID standard says every
validator MUST refuse: a leaf that is itself a CA, one allowed to sign certificates or CRLs,
one naming the bare trust domain, one naming another trust domain. :func:`mint` makes them
with the key in a control service's data dir (``ca.pem`` / ``ca.key``), and
:class:`HostileServer` presents one on 127.0.0.1 to test clients.

Use::

    bad = mint_case(control.data_dir, "foreign-trust-domain", tmp_path)
    httpx.get(url, verify=bad.client_context())   # expect 403 naming REASONS[case]
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlib.identity.keys import generate_private_key, private_key_pem

__all__ = [
    "CASES",
    "FOREIGN_ID",
    "MALLORY_ID",
    "REASONS",
    "HostileCert",
    "HostileServer",
    "mint",
    "mint_case",
]

MALLORY_ID = "spiffe://mesh.local/ns/default/sa/mallory"
"""A well-formed workload ID of the mesh, carried by the leaves that break a leaf rule."""
FOREIGN_ID = "spiffe://evil.example/ns/default/sa/x"
"""A workload ID of a trust domain the mesh does not trust."""
BARE_ID = "spiffe://mesh.local"


@dataclass(frozen=True, slots=True)
class _Case:
    spiffe_id: str | None  # None: the caller's choice (default MALLORY_ID)
    ca: bool = False
    key_cert_sign: bool = False
    crl_sign: bool = False


CASES: dict[str, _Case] = {
    "ca-true": _Case(None, ca=True),
    "key-cert-sign": _Case(None, key_cert_sign=True),
    "crl-sign": _Case(None, crl_sign=True),
    "bare-trust-domain": _Case(BARE_ID),
    "foreign-trust-domain": _Case(FOREIGN_ID),
}
"""Every hostile leaf by name; each breaks exactly one X.509-SVID leaf rule."""

REASONS = {
    "ca-true": "cA=true",
    "key-cert-sign": "keyCertSign",
    "crl-sign": "cRLSign",
    "bare-trust-domain": "non-empty path",
    "foreign-trust-domain": "'evil.example', which this mesh does not trust",
}
"""A fragment of the refusal message each case must produce (the reason, named)."""


@dataclass(frozen=True, slots=True)
class HostileCert:
    """One minted leaf, its key and the bundle (the mesh CA) that verifies it."""

    name: str
    spiffe_id: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    bundle_pem: bytes
    directory: Path

    def files(self) -> tuple[Path, Path]:
        """``(cert, key)`` written under :attr:`directory` (ssl loads keys from files only)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        cert = self.directory / f"{self.name}.pem"
        key = self.directory / f"{self.name}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key

    def client_context(self) -> ssl.SSLContext:
        """A client context presenting this leaf; it does not care who the server is."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(*self.files())
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting this leaf; client certificates are not asked for."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.files())
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def grpc_channel_credentials(self) -> Any:
        """gRPC client credentials presenting this leaf and trusting the mesh CA."""
        import grpc  # type: ignore[import-untyped]

        return grpc.ssl_channel_credentials(
            root_certificates=self.bundle_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )


def _load_ca(data_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bytes]:
    cert_pem = (data_dir / "ca.pem").read_bytes()
    key = serialization.load_pem_private_key((data_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return x509.load_pem_x509_certificate(cert_pem), key, cert_pem


def _dns_name(spiffe_id: str) -> str | None:
    # spiffe://td/ns/<ns>/sa/<svc> -> <svc>.<ns>.svc.<td>, the SAN gRPC's client checks.
    parts = spiffe_id.removeprefix("spiffe://").split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        return f"{parts[4]}.{parts[2]}.svc.{parts[0]}"
    return None


def mint(
    ca_dir: Path,
    spiffe_id: str,
    out_dir: Path,
    *,
    name: str = "hostile",
    ca: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> HostileCert:
    """Sign a leaf for *spiffe_id* with the CA in *ca_dir*, otherwise in the SVID profile.

    The profile is the mesh CA's (ECDSA P-256, empty subject, critical SAN with the URI and,
    for a workload ID, its DNS name; EKU serverAuth+clientAuth), changed only where asked:
    *ca* sets ``basicConstraints cA=true``; *key_cert_sign* / *crl_sign* add those key usages.
    """
    ca_cert, ca_key, bundle = _load_ca(ca_dir)
    key = generate_private_key()
    now = datetime.now(UTC)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    dns = _dns_name(spiffe_id)
    if dns is not None:
        names.append(x509.DNSName(dns))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return HostileCert(
        name=name,
        spiffe_id=spiffe_id,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=private_key_pem(key),
        bundle_pem=bundle,
        directory=out_dir,
    )


def mint_case(
    ca_dir: Path, case: str, out_dir: Path, *, spiffe_id: str = MALLORY_ID
) -> HostileCert:
    """The hostile leaf *case* of :data:`CASES`; leaf-rule cases carry *spiffe_id*."""
    spec = CASES[case]
    return mint(
        ca_dir,
        spec.spiffe_id or spiffe_id,
        out_dir,
        name=case,
        ca=spec.ca,
        key_cert_sign=spec.key_cert_sign,
        crl_sign=spec.crl_sign,
    )


class HostileServer:
    """A TLS server on 127.0.0.1 presenting a hostile leaf, answering 200 to any request.

    ``requests`` counts requests that reached it (any byte after the handshake counts), so a
    test can show a client refused it before sending anything.
    """

    def __init__(self, cert: HostileCert) -> None:
        self._context = cert.server_context()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hostile-server", daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with raw:
                self._answer(raw)

    def _answer(self, raw: socket.socket) -> None:
        raw.settimeout(2)
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                data = tls.recv(65536)
                if not data:
                    return
                self.requests += 1
                body = b"{}"
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
        except (OSError, ssl.SSLError):
            return  # the client hung up after the handshake: what a refusing client does
