"""Peer SPIFFE IDs read from real getpeercert() dicts after a TLS handshake on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshlib.errors import IdentityError
from meshlib.identity.keys import generate_private_key, private_key_pem, write_private_file
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import spiffe_id_from_peercert
from meshlib_control.ca.authority import CertificateAuthority

TD = "mesh.local"
ORDERS = SpiffeId.for_service(TD, "default", "orders")
PAYMENTS = SpiffeId.for_service(TD, "default", "payments")


def _files(tmp: Path, name: str, chain: bytes, key: bytes) -> tuple[Path, Path]:
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(chain)
    write_private_file(key_path, key)
    return cert_path, key_path


def _issue(ca: CertificateAuthority, tmp: Path, sid: SpiffeId) -> tuple[Path, Path]:
    issued, key = ca.issue_local(sid, timedelta(hours=1))
    return _files(tmp, sid.service or "x", issued.cert_pem, key)


def _two_uri_cert(tmp: Path) -> tuple[Path, Path]:
    """A leaf with two URI SANs, signed by the CA key in *tmp* (OpenSSL accepts it)."""
    ca_key = serialization.load_pem_private_key((tmp / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, type(generate_private_key()))
    ca_cert = x509.load_pem_x509_certificate((tmp / "ca.pem").read_bytes())
    key = generate_private_key()
    now = datetime.now(UTC)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(str(ORDERS)),
        x509.UniformResourceIdentifier(str(PAYMENTS)),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return _files(
        tmp, "two-uris", cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)
    )


def _handshake(
    bundle: Path, server: tuple[Path, Path], client: tuple[Path, Path]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Run one mTLS handshake; return (server's view of client, client's view of server)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*server)
    server_ctx.load_verify_locations(bundle)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False  # peers are identified by SPIFFE ID, not host name
    client_ctx.load_cert_chain(*client)
    client_ctx.load_verify_locations(bundle)

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, Any] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["client_cert"] = tls.getpeercert()
                tls.sendall(b"k")
        except Exception as exc:  # reported by the main thread
            seen["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw) as tls,
        ):
            server_cert = tls.getpeercert()
            assert tls.recv(1) == b"k"  # the server has finished verifying us
    finally:
        thread.join(timeout=5)
        listener.close()
    if "error" in seen:
        raise seen["error"]
    return seen["client_cert"], server_cert


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    """A fresh mesh CA in the test's temporary directory."""
    return CertificateAuthority.load_or_create(tmp_path, TD)


def test_peer_id_from_real_handshake(ca: CertificateAuthority, tmp_path: Path) -> None:
    """Both sides of a real mTLS handshake read the other's SPIFFE ID from getpeercert()."""
    client_view, server_view = _handshake(
        tmp_path / "ca.pem", _issue(ca, tmp_path, PAYMENTS), _issue(ca, tmp_path, ORDERS)
    )
    assert spiffe_id_from_peercert(client_view) == str(ORDERS)
    assert spiffe_id_from_peercert(server_view) == str(PAYMENTS)


def test_two_uri_sans_rejected_after_openssl_accepts(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A two-URI-SAN certificate that OpenSSL accepts is rejected by spiffe_id_from_peercert."""
    client_view, _ = _handshake(
        tmp_path / "ca.pem", _issue(ca, tmp_path, PAYMENTS), _two_uri_cert(tmp_path)
    )
    assert client_view is not None
    assert [k for k, _ in client_view["subjectAltName"]] == ["URI", "URI"]
    with pytest.raises(
        IdentityError, match=r"has 2 URI SANs; an X\.509-SVID must have exactly one"
    ):
        spiffe_id_from_peercert(client_view)


@pytest.mark.parametrize(
    ("peercert", "reason"),
    [
        (None, "no certificate"),
        ({}, "no certificate"),
        ({"subject": ()}, "no URI SAN"),
        ({"subjectAltName": (("DNS", "orders.default.svc.mesh.local"),)}, "no URI SAN"),
        ({"subjectAltName": (("URI", "https://orders.example"),)}, "not a SPIFFE ID"),
        ({"subjectAltName": (("URI", "spiffe://"),)}, "not a SPIFFE ID"),
    ],
)
def test_peercert_refusals(peercert: dict[str, Any] | None, reason: str) -> None:
    """Missing certificates, missing URI SANs and non-SPIFFE URIs are refused."""
    with pytest.raises(IdentityError, match=reason):
        spiffe_id_from_peercert(peercert)


def test_peercert_is_fast() -> None:
    """spiffe_id_from_peercert takes a few microseconds, no certificate parsing."""
    peercert = {
        "subject": (),
        "subjectAltName": (("URI", str(ORDERS)), ("DNS", "orders.default.svc.mesh.local")),
    }
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        spiffe_id_from_peercert(peercert)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 20e-6  # generous for slow CI; typically well under 1 µs
