"""X.509-SVID assembly and validation, fingerprints and certificate identities."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshlib.errors import IdentityError
from meshlib.identity.keys import generate_private_key, private_key_pem
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import (
    SVID,
    certificate_fingerprint,
    load_pem_certificates,
    spiffe_id_from_certificate,
)

PEM = serialization.Encoding.PEM
ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


def _root() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    root: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName] | None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(root[0], hashes.SHA256())


def _uri(value: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(value)


def test_from_pem_builds_svid() -> None:
    """from_pem reads the ID, serial and aware-UTC validity from the leaf."""
    root = _root()
    key = generate_private_key()
    leaf = _leaf(root, key, [_uri(ORDERS), x509.DNSName("orders.default.svc.mesh.local")])
    svid = SVID.from_pem(leaf.public_bytes(PEM), private_key_pem(key), root[1].public_bytes(PEM))
    assert svid.spiffe_id == SpiffeId.parse(ORDERS)
    assert svid.serial == leaf.serial_number
    assert svid.not_before == leaf.not_valid_before_utc
    assert svid.not_after == leaf.not_valid_after_utc
    assert svid.not_after.tzinfo is not None
    assert svid.not_after.utcoffset() == timedelta(0)


def test_repr_hides_key() -> None:
    """repr(SVID) shows the ID but never the private key."""
    root = _root()
    key = generate_private_key()
    key_pem = private_key_pem(key)
    leaf = _leaf(root, key, [_uri(ORDERS)])
    svid = SVID.from_pem(leaf.public_bytes(PEM), key_pem, root[1].public_bytes(PEM))
    text = repr(svid)
    assert ORDERS in text
    assert "PRIVATE" not in text
    assert key_pem.decode().splitlines()[1] not in text


def test_from_pem_refuses_mismatched_key() -> None:
    """A key that is not the leaf's is refused."""
    root = _root()
    leaf = _leaf(root, generate_private_key(), [_uri(ORDERS)])
    with pytest.raises(IdentityError, match="does not match"):
        SVID.from_pem(
            leaf.public_bytes(PEM),
            private_key_pem(generate_private_key()),
            root[1].public_bytes(PEM),
        )


def test_from_pem_refuses_two_uri_sans() -> None:
    """A leaf with two URI SANs is refused, as the SPIFFE profile requires."""
    root = _root()
    key = generate_private_key()
    leaf = _leaf(root, key, [_uri(ORDERS), _uri("spiffe://mesh.local/ns/default/sa/admin")])
    with pytest.raises(
        IdentityError, match=r"has 2 URI SANs; an X\.509-SVID must have exactly one"
    ):
        SVID.from_pem(leaf.public_bytes(PEM), private_key_pem(key), root[1].public_bytes(PEM))


@pytest.mark.parametrize(
    ("chain", "key", "bundle", "reason"),
    [
        (b"garbage", None, None, "not a PEM certificate"),
        (None, b"garbage", None, "private key does not parse"),
        (None, None, b"", "trust bundle"),
    ],
)
def test_from_pem_refuses_unparsable_parts(
    chain: bytes | None, key: bytes | None, bundle: bytes | None, reason: str
) -> None:
    """A chain, key or bundle that does not parse raises IdentityError naming it."""
    root = _root()
    leaf_key = generate_private_key()
    leaf = _leaf(root, leaf_key, [_uri(ORDERS)])
    with pytest.raises(IdentityError, match=reason):
        SVID.from_pem(
            chain if chain is not None else leaf.public_bytes(PEM),
            key if key is not None else private_key_pem(leaf_key),
            bundle if bundle is not None else root[1].public_bytes(PEM),
        )


def test_spiffe_id_from_certificate_counts_uris() -> None:
    """spiffe_id_from_certificate needs exactly one URI SAN and a SAN extension."""
    root = _root()
    key = generate_private_key()
    good = _leaf(root, key, [_uri(ORDERS), x509.DNSName("x")])
    assert str(spiffe_id_from_certificate(good)) == ORDERS
    with pytest.raises(IdentityError, match="has 0 URI SANs"):
        spiffe_id_from_certificate(_leaf(root, key, [x509.DNSName("x")]))
    with pytest.raises(IdentityError, match="has 2 URI SANs"):
        spiffe_id_from_certificate(_leaf(root, key, [_uri(ORDERS), _uri(ORDERS + "2")]))
    with pytest.raises(IdentityError, match="no subjectAltName"):
        spiffe_id_from_certificate(_leaf(root, key, None))
    with pytest.raises(IdentityError, match="scheme"):
        spiffe_id_from_certificate(_leaf(root, key, [_uri("https://example.org")]))


def test_fingerprint_is_sha256_of_der() -> None:
    """certificate_fingerprint is sha256:<hex of DER>, for a cert, its PEM or its DER."""
    _, cert = _root()
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert certificate_fingerprint(cert) == expected
    assert certificate_fingerprint(cert.public_bytes(PEM)) == expected
    assert certificate_fingerprint(der) == expected


def test_load_pem_certificates_keeps_order() -> None:
    """load_pem_certificates returns every certificate in order and refuses garbage."""
    a, b = _root()[1], _root()[1]
    assert load_pem_certificates(a.public_bytes(PEM) + b.public_bytes(PEM)) == [a, b]
    with pytest.raises(IdentityError):
        load_pem_certificates(b"not pem")


def test_renewal_time_is_half_lifetime_with_jitter() -> None:
    """renewal_time falls at 50 % of the lifetime, moved by at most the jitter."""
    root = _root()
    key = generate_private_key()
    leaf = _leaf(root, key, [_uri(ORDERS)])
    svid = SVID.from_pem(leaf.public_bytes(PEM), private_key_pem(key), root[1].public_bytes(PEM))
    half = svid.not_before + svid.lifetime / 2
    assert svid.renewal_time(rand=lambda: 0.5) == half
    assert svid.renewal_time(rand=lambda: 0.0) == svid.not_before + svid.lifetime * 0.45
    assert svid.renewal_time(rand=lambda: 0.999999) < svid.not_before + svid.lifetime * 0.55
    assert not svid.is_expired(datetime.now(UTC))
    assert svid.is_expired(svid.not_after)
