"""The mesh CA: its root, plugged-in CAs, the SVID profile and every CSR refusal."""

from __future__ import annotations

import ipaddress
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import DNSName
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from meshlib.errors import ConfigError
from meshlib.identity.keys import build_csr, generate_private_key, private_key_pem
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import SVID, certificate_fingerprint, load_pem_certificates
from meshlib_control.ca.authority import CertificateAuthority, CSRRejected

TD = "mesh.local"
ORDERS = SpiffeId.for_service(TD, "default", "orders")
INVENTORY = SpiffeId.for_service(TD, "default", "inventory")
PEM = serialization.Encoding.PEM
DAY = timedelta(days=1)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    """A fresh self-created mesh CA."""
    return CertificateAuthority.load_or_create(tmp_path / "control", TD)


# ---------------------------------------------------------------- the created root


def test_first_start_creates_root_files(tmp_path: Path) -> None:
    """First start writes ca.pem 0644 and ca.key 0600 in a 0700 data directory."""
    data = tmp_path / "control"
    CertificateAuthority.load_or_create(data, TD)
    assert _mode(data) == 0o700
    assert _mode(data / "ca.pem") == 0o644
    assert _mode(data / "ca.key") == 0o600
    assert sorted(p.name for p in data.iterdir()) == ["ca.key", "ca.pem"]


def test_root_profile(ca: CertificateAuthority) -> None:
    """The root is a 10-year self-signed P-256 CA with the trust domain's SPIFFE ID."""
    root = ca.root
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        f"meshlib root CA {TD}"
    )
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    san = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key)
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3651)
    assert ca.not_after == root.not_valid_after_utc
    assert ca.trust_domain == TD
    assert load_pem_certificates(ca.bundle_pem) == [root]
    assert ca.fingerprint == certificate_fingerprint(root)


def test_second_start_loads_same_ca(tmp_path: Path) -> None:
    """load_or_create twice gives the same root, and what the first signs the second trusts."""
    first = CertificateAuthority.load_or_create(tmp_path, TD)
    second = CertificateAuthority.load_or_create(tmp_path, TD)
    assert second.fingerprint == first.fingerprint
    assert second.bundle_pem == first.bundle_pem
    issued = second.sign_csr(build_csr(generate_private_key(), ORDERS), entitled=ORDERS, ttl=DAY)
    load_pem_certificates(issued.cert_pem)[0].verify_directly_issued_by(first.root)
    assert _mode(tmp_path / "ca.key") == 0o600


@pytest.mark.parametrize("missing", ["ca.pem", "ca.key"])
def test_half_a_ca_is_refused(tmp_path: Path, missing: str) -> None:
    """With only one of ca.pem / ca.key present, the CA refuses to start rather than replace it."""
    CertificateAuthority.load_or_create(tmp_path, TD)
    (tmp_path / missing).unlink()
    with pytest.raises(ConfigError, match="refusing to create a new CA"):
        CertificateAuthority.load_or_create(tmp_path, TD)


def test_readable_key_is_refused(tmp_path: Path) -> None:
    """A ca.key readable by group or others is refused with the chmod to run."""
    CertificateAuthority.load_or_create(tmp_path, TD)
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        CertificateAuthority.load_or_create(tmp_path, TD)


def test_other_trust_domain_is_refused(tmp_path: Path) -> None:
    """Loading a data directory's CA under another trust domain is refused."""
    CertificateAuthority.load_or_create(tmp_path, TD)
    with pytest.raises(ConfigError, match=re.escape("belongs to spiffe://mesh.local")):
        CertificateAuthority.load_or_create(tmp_path, "other.org")


def test_invalid_trust_domain_is_refused(tmp_path: Path) -> None:
    """An invalid trust domain name is a ConfigError naming trust_domain."""
    with pytest.raises(ConfigError, match="trust_domain"):
        CertificateAuthority.load_or_create(tmp_path, "Not Valid")


# ---------------------------------------------------------------- the SVID profile


def _only_leaf(pem: bytes) -> x509.Certificate:
    certs = load_pem_certificates(pem)
    assert len(certs) == 1
    return certs[0]


def test_issued_svid_follows_spiffe_profile(ca: CertificateAuthority) -> None:
    """A signed CSR yields a leaf that follows the X.509-SVID profile field by field."""
    key = generate_private_key()
    before = datetime.now(UTC).replace(microsecond=0)
    issued = ca.sign_csr(build_csr(key, ORDERS), entitled=ORDERS, ttl=DAY)
    after = datetime.now(UTC)
    leaf = _only_leaf(issued.cert_pem)  # a root CA sends the leaf alone

    assert leaf.version == x509.Version.v3
    assert leaf.subject == x509.Name([])
    assert leaf.issuer == ca.root.subject
    assert leaf.public_key() == key.public_key()
    assert leaf.serial_number == issued.serial
    assert 0 < issued.serial < 2**128
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert leaf.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    leaf.verify_directly_issued_by(ca.root)

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # required by SPIFFE with an empty subject
    assert list(san.value) == [
        x509.UniformResourceIdentifier(str(ORDERS)),
        x509.DNSName("orders.default.svc.mesh.local"),
    ]
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and ku.value.key_agreement
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = ca.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest

    assert before - timedelta(seconds=60) <= leaf.not_valid_before_utc
    assert leaf.not_valid_before_utc <= after - timedelta(seconds=59)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == DAY + timedelta(seconds=60)
    assert (issued.not_before, issued.not_after) == (
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
    )
    assert issued.spiffe_id == str(ORDERS)
    assert len(leaf.extensions) == 6


def test_issued_svid_verifies_as_client_and_server(ca: CertificateAuthority) -> None:
    """cryptography's RFC 5280 verifier accepts the SVID for client and server use."""
    issued = ca.sign_csr(build_csr(generate_private_key(), ORDERS), entitled=ORDERS, ttl=DAY)
    leaf = _only_leaf(issued.cert_pem)
    builder = PolicyBuilder().store(Store([ca.root]))
    verified = builder.build_client_verifier().verify(leaf, [])
    assert x509.UniformResourceIdentifier(str(ORDERS)) in (verified.subjects or [])
    builder.build_server_verifier(DNSName("orders.default.svc.mesh.local")).verify(leaf, [])


def test_issued_svid_assembles_into_svid(ca: CertificateAuthority) -> None:
    """The issued certificate, the workload's key and the bundle make a valid SVID."""
    key = generate_private_key()
    issued = ca.sign_csr(build_csr(key, ORDERS), entitled=ORDERS, ttl=DAY)
    svid = SVID.from_pem(issued.cert_pem, private_key_pem(key), ca.bundle_pem)
    assert svid.spiffe_id == ORDERS
    assert svid.serial == issued.serial


def test_serials_are_random(ca: CertificateAuthority) -> None:
    """Two issued certificates never share a serial number."""
    csr = build_csr(generate_private_key(), ORDERS)
    serials = {ca.sign_csr(csr, entitled=ORDERS, ttl=DAY).serial for _ in range(5)}
    assert len(serials) == 5


def test_non_workload_id_has_only_the_uri(ca: CertificateAuthority) -> None:
    """For a non-workload ID such as spiffe://td/admin the SAN holds only the URI."""
    admin = SpiffeId.parse(f"spiffe://{TD}/admin")
    issued = ca.sign_csr(build_csr(generate_private_key(), admin), entitled=admin, ttl=DAY)
    san = _only_leaf(issued.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(str(admin))]


def test_issue_local_for_the_control_service(ca: CertificateAuthority) -> None:
    """issue_local generates the key in-process and adds the extra DNS and IP SANs."""
    control = SpiffeId.parse(f"spiffe://{TD}/control")
    issued, key_pem = ca.issue_local(
        control, timedelta(days=7), extra_dns=("localhost",), extra_ips=("127.0.0.1",)
    )
    leaf = _only_leaf(issued.cert_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [
        x509.UniformResourceIdentifier(str(control)),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    svid = SVID.from_pem(issued.cert_pem, key_pem, ca.bundle_pem)
    assert svid.spiffe_id == control
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    PolicyBuilder().store(Store([ca.root])).build_server_verifier(DNSName("localhost")).verify(
        leaf, []
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ttl": timedelta(0)}, "ttl must be > 0"),
        ({"ttl": timedelta(days=366)}, "at most 365 days"),
        ({"extra_ips": ("localhost",)}, "extra_ips"),
        ({"extra_dns": ("a b/c",)}, "extra_dns"),
    ],
)
def test_issue_local_refusals(
    ca: CertificateAuthority, kwargs: dict[str, object], reason: str
) -> None:
    """issue_local refuses a bad ttl or extra name with a ConfigError naming it."""
    control = SpiffeId.parse(f"spiffe://{TD}/control")
    ttl = kwargs.pop("ttl", DAY)
    assert isinstance(ttl, timedelta)
    with pytest.raises(ConfigError, match=reason):
        ca.issue_local(control, ttl, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- CSR refusals


def _csr(key: CertificateIssuerPrivateKeyTypes, names: list[x509.GeneralName] | None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(PEM)


def _uri(sid: SpiffeId | str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(str(sid))


def _tampered(csr_pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s value
    return x509.load_der_x509_csr(bytes(der)).public_bytes(PEM)


def _refusal_cases() -> list[tuple[str, bytes, str]]:
    p256 = generate_private_key()
    return [
        ("garbage", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "does not parse"),
        ("not pem", b"hello", "does not parse"),
        ("tampered", _tampered(build_csr(p256, ORDERS)), "bad signature"),
        (
            "rsa-1024",
            _csr(rsa.generate_private_key(65537, 1024), [_uri(ORDERS)]),
            "key must be ECDSA P-256, got RSA-1024",
        ),
        (
            "p-192",
            _csr(ec.generate_private_key(ec.SECP192R1()), [_uri(ORDERS)]),
            "key must be ECDSA P-256, got EC secp192r1",
        ),
        (
            "secp256k1",
            _csr(ec.generate_private_key(ec.SECP256K1()), [_uri(ORDERS)]),
            "key must be ECDSA P-256, got EC secp256k1",
        ),
        (
            "p-384",
            _csr(ec.generate_private_key(ec.SECP384R1()), [_uri(ORDERS)]),
            "got EC secp384r1",
        ),
        (
            "two uris",
            _csr(p256, [_uri(ORDERS), _uri(INVENTORY)]),
            "CSR has 2 URI SANs; an X.509-SVID must have exactly one",
        ),
        (
            "other identity",
            build_csr(p256, INVENTORY),
            f"CSR asks for {INVENTORY} but the caller is entitled to {ORDERS}",
        ),
        ("no san", _csr(p256, None), "CSR has no URI SAN"),
        ("dns only", _csr(p256, [x509.DNSName("orders.default.svc.mesh.local")]), "no URI SAN"),
        (
            "foreign dns",
            _csr(p256, [_uri(ORDERS), x509.DNSName("www.bank.example")]),
            "CSR asks for DNS name 'www.bank.example'; the only one allowed",
        ),
        (
            "other service's dns",
            _csr(p256, [_uri(ORDERS), x509.DNSName("inventory.default.svc.mesh.local")]),
            "DNS name 'inventory.default.svc.mesh.local'",
        ),
        (
            "ip san",
            _csr(p256, [_uri(ORDERS), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
            "IPAddress SAN",
        ),
    ]


@pytest.mark.parametrize(
    ("case", "csr_pem", "reason"), _refusal_cases(), ids=[c[0] for c in _refusal_cases()]
)
def test_csr_refusals(ca: CertificateAuthority, case: str, csr_pem: bytes, reason: str) -> None:
    """Each bad CSR is refused with CSRRejected whose reason says what is wrong."""
    with pytest.raises(CSRRejected) as info:
        ca.sign_csr(csr_pem, entitled=ORDERS, ttl=DAY)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("ttl", "reason"),
    [
        (timedelta(0), "ttl must be > 0"),
        (timedelta(seconds=-5), "ttl must be > 0"),
        (timedelta(days=30, seconds=1), "ttl must be at most 30 days"),
    ],
)
def test_ttl_refusals(ca: CertificateAuthority, ttl: timedelta, reason: str) -> None:
    """A ttl of zero or less, or over 30 days, is refused."""
    with pytest.raises(CSRRejected, match=reason):
        ca.sign_csr(build_csr(generate_private_key(), ORDERS), entitled=ORDERS, ttl=ttl)


def test_thirty_days_is_allowed(ca: CertificateAuthority) -> None:
    """A ttl of exactly 30 days is the longest accepted."""
    issued = ca.sign_csr(
        build_csr(generate_private_key(), ORDERS), entitled=ORDERS, ttl=timedelta(days=30)
    )
    assert issued.not_after - issued.not_before == timedelta(days=30, seconds=60)


@pytest.mark.parametrize(
    ("entitled", "reason"),
    [
        (SpiffeId.for_service("other.org", "default", "orders"), "outside trust domain"),
        (SpiffeId.parse(f"spiffe://{TD}"), "non-root path"),
    ],
)
def test_entitlement_outside_the_ca_is_refused(
    ca: CertificateAuthority, entitled: SpiffeId, reason: str
) -> None:
    """The CA issues only for non-root IDs of its own trust domain."""
    with pytest.raises(CSRRejected, match=reason):
        ca.sign_csr(build_csr(generate_private_key(), entitled), entitled=entitled, ttl=DAY)


# ---------------------------------------------------------------- plugged-in CAs


def _ca_cert(
    key: ec.EllipticCurvePrivateKey,
    cn: str,
    *,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    ca: bool = True,
    path_length: int | None = None,
    days: int = 365,
    trust_domain: str | None = TD,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), False
        )
    if trust_domain is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_uri(f"spiffe://{trust_domain}")]), False
        )
    return builder.sign(signer_key, hashes.SHA256())


def _write(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(PEM) for c in certs))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(private_key_pem(key))
    path.chmod(0o600)
    return path


def test_plugged_in_root(tmp_path: Path) -> None:
    """A plugged-in root CA signs leaves that chain to it, and its fingerprint is pinned."""
    key = generate_private_key()
    root = _ca_cert(key, "corp root", path_length=0)
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "root.pem", root), _write_key(tmp_path / "root.key", key), TD
    )
    assert ca.root == root and ca.signing_certificate == root
    assert ca.fingerprint == certificate_fingerprint(root)
    issued = ca.sign_csr(build_csr(generate_private_key(), ORDERS), entitled=ORDERS, ttl=DAY)
    leaf = _only_leaf(issued.cert_pem)
    leaf.verify_directly_issued_by(root)
    assert leaf.issuer == root.subject


def test_plugged_in_intermediate(tmp_path: Path) -> None:
    """An intermediate CA issues leaf+intermediate chains that verify up to the root."""
    root_key, int_key = generate_private_key(), generate_private_key()
    root = _ca_cert(root_key, "corp root", path_length=1)
    inter = _ca_cert(int_key, "mesh intermediate", issuer=(root_key, root), path_length=0)
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "ca.pem", inter, root), _write_key(tmp_path / "ca.key", int_key), TD
    )
    assert ca.root == root
    assert ca.signing_certificate == inter
    assert load_pem_certificates(ca.bundle_pem) == [root]
    assert ca.fingerprint == certificate_fingerprint(root)
    assert ca.not_after == inter.not_valid_after_utc

    key = generate_private_key()
    issued = ca.sign_csr(build_csr(key, ORDERS), entitled=ORDERS, ttl=DAY)
    chain = load_pem_certificates(issued.cert_pem)
    assert chain[1:] == [inter]
    chain[0].verify_directly_issued_by(inter)
    aki = chain[0].extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    inter_ski = inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == inter_ski.digest
    verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
    verified = verifier.verify(chain[0], chain[1:])
    assert verified.chain[-1] == root
    svid = SVID.from_pem(issued.cert_pem, private_key_pem(key), ca.bundle_pem)
    assert svid.spiffe_id == ORDERS


def test_intermediate_with_separate_bundle(tmp_path: Path) -> None:
    """An intermediate alone in its file works when the trust bundle is given separately."""
    root_key, int_key = generate_private_key(), generate_private_key()
    root = _ca_cert(root_key, "corp root", path_length=1)
    inter = _ca_cert(int_key, "mesh intermediate", issuer=(root_key, root), path_length=0)
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "ca.pem", inter),
        _write_key(tmp_path / "ca.key", int_key),
        TD,
        bundle_path=_write(tmp_path / "bundle.pem", root),
    )
    issued = ca.sign_csr(build_csr(generate_private_key(), ORDERS), entitled=ORDERS, ttl=DAY)
    assert load_pem_certificates(issued.cert_pem)[1:] == [inter]
    assert ca.root == root


def test_intermediate_without_root_is_refused(tmp_path: Path) -> None:
    """An intermediate with no root to trust is refused with how to fix it."""
    root_key, int_key = generate_private_key(), generate_private_key()
    root = _ca_cert(root_key, "corp root")
    inter = _ca_cert(int_key, "mesh intermediate", issuer=(root_key, root))
    with pytest.raises(ConfigError, match="no self-signed root"):
        CertificateAuthority.from_files(
            _write(tmp_path / "ca.pem", inter), _write_key(tmp_path / "ca.key", int_key), TD
        )


def test_chain_out_of_order_is_refused(tmp_path: Path) -> None:
    """A chain whose certificates do not issue each other in order is refused."""
    root_key, int_key = generate_private_key(), generate_private_key()
    other_root = _ca_cert(generate_private_key(), "other root")
    root = _ca_cert(root_key, "corp root")
    inter = _ca_cert(int_key, "mesh intermediate", issuer=(root_key, root))
    with pytest.raises(ConfigError, match="out of order"):
        CertificateAuthority.from_files(
            _write(tmp_path / "ca.pem", inter, other_root),
            _write_key(tmp_path / "ca.key", int_key),
            TD,
        )


def test_non_ca_certificate_is_refused(tmp_path: Path) -> None:
    """A certificate whose basicConstraints says cA=false cannot be plugged in as the CA."""
    key = generate_private_key()
    cert = _ca_cert(key, "not a ca", ca=False)
    with pytest.raises(ConfigError, match="is not a CA certificate"):
        CertificateAuthority.from_files(
            _write(tmp_path / "ca.pem", cert), _write_key(tmp_path / "ca.key", key), TD
        )


def test_mismatched_key_is_refused(tmp_path: Path) -> None:
    """A CA key that does not match the CA certificate is refused."""
    cert = _ca_cert(generate_private_key(), "corp root")
    with pytest.raises(ConfigError, match="does not match"):
        CertificateAuthority.from_files(
            _write(tmp_path / "ca.pem", cert),
            _write_key(tmp_path / "ca.key", generate_private_key()),
            TD,
        )


def test_plugged_in_ca_of_other_trust_domain_is_refused(tmp_path: Path) -> None:
    """A CA whose own SPIFFE ID names another trust domain is refused."""
    key = generate_private_key()
    cert = _ca_cert(key, "corp root", trust_domain="corp.example")
    with pytest.raises(ConfigError, match=re.escape("belongs to spiffe://corp.example")):
        CertificateAuthority.from_files(
            _write(tmp_path / "ca.pem", cert), _write_key(tmp_path / "ca.key", key), TD
        )


def test_unparsable_files_are_refused(tmp_path: Path) -> None:
    """Missing or garbage CA files give a ConfigError naming the file."""
    (tmp_path / "ca.pem").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"ca\.pem"):
        CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "ca.key", TD)
    key = generate_private_key()
    _write(tmp_path / "ca.pem", _ca_cert(key, "corp root"))
    (tmp_path / "ca.key").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"ca\.key"):
        CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "ca.key", TD)


def test_leaf_never_outlives_its_issuer(tmp_path: Path) -> None:
    """A leaf's notAfter is capped at the CA's own expiry."""
    key = generate_private_key()
    root = _ca_cert(key, "short-lived root", days=2)
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "ca.pem", root), _write_key(tmp_path / "ca.key", key), TD
    )
    issued = ca.sign_csr(
        build_csr(generate_private_key(), ORDERS), entitled=ORDERS, ttl=timedelta(days=30)
    )
    assert issued.not_after == root.not_valid_after_utc
