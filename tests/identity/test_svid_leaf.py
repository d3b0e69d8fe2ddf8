"""The X.509-SVID leaf rules every validator of ours applies: one rule per test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshlib.errors import IdentityError
from meshlib.identity.keys import generate_private_key
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import PeerSVIDValidator, check_svid_leaf

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
TRUSTED = {"mesh.local"}
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM

_ROOT_KEY = generate_private_key()
_ROOT_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])


def _usage(*, cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    uris: list[str] | None = None,
    *,
    ca: bool | None = False,
    usage: x509.KeyUsage | None = None,
) -> x509.Certificate:
    """A leaf in the SVID profile, with *uris* (default: orders) and the given deviations."""
    key: ec.EllipticCurvePrivateKey = generate_private_key()
    now = datetime.now(UTC)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(u) for u in (uris if uris is not None else [ORDERS])
    ]
    names.append(x509.DNSName("orders.default.svc.mesh.local"))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(_ROOT_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(usage or _usage(), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True
        )
    return builder.sign(_ROOT_KEY, hashes.SHA256())


def test_a_leaf_in_the_svid_profile_passes() -> None:
    """A one-URI workload leaf of a trusted domain, not a CA, gives its SPIFFE ID."""
    assert check_svid_leaf(_leaf(), trust_domains=TRUSTED) == SpiffeId.parse(ORDERS)


def test_a_leaf_without_basic_constraints_is_not_a_ca() -> None:
    """basicConstraints may be absent: the leaf is then no CA and passes."""
    assert check_svid_leaf(_leaf(ca=None), trust_domains=TRUSTED) == SpiffeId.parse(ORDERS)


@pytest.mark.parametrize("count", [0, 2])
def test_exactly_one_uri_san(count: int) -> None:
    """Zero URI SANs or two are refused, saying how many there were."""
    uris = [ORDERS, "spiffe://mesh.local/ns/default/sa/admin"][:count]
    with pytest.raises(IdentityError, match=f"has {count} URI SANs; an X.509-SVID must have"):
        check_svid_leaf(_leaf(uris), trust_domains=TRUSTED)


def test_the_bare_trust_domain_id_is_refused() -> None:
    """``spiffe://mesh.local`` names no workload: the path must be non-empty."""
    with pytest.raises(IdentityError, match="must have a non-empty path"):
        check_svid_leaf(_leaf(["spiffe://mesh.local"]), trust_domains=TRUSTED)


def test_a_foreign_trust_domain_is_refused() -> None:
    """A trusted root must not vouch for another trust domain's names."""
    with pytest.raises(
        IdentityError,
        match=r"trust domain 'evil\.example', which this mesh does not trust \(trusted: mesh",
    ):
        check_svid_leaf(_leaf(["spiffe://evil.example/ns/default/sa/x"]), trust_domains=TRUSTED)


def test_a_federated_trust_domain_is_accepted() -> None:
    """Every trust domain of the set is trusted (room for federation)."""
    foreign = "spiffe://partner.example/ns/default/sa/x"
    got = check_svid_leaf(_leaf([foreign]), trust_domains={"mesh.local", "partner.example"})
    assert str(got) == foreign


def test_a_ca_leaf_is_refused() -> None:
    """basicConstraints cA=true on a leaf is refused."""
    with pytest.raises(IdentityError, match=r"is a CA certificate \(basicConstraints cA=true\)"):
        check_svid_leaf(_leaf(ca=True), trust_domains=TRUSTED)


@pytest.mark.parametrize(
    ("usage", "name"),
    [(_usage(cert_sign=True), "keyCertSign"), (_usage(crl_sign=True), "cRLSign")],
)
def test_certificate_or_crl_signing_usage_is_refused(usage: x509.KeyUsage, name: str) -> None:
    """A leaf allowed to sign certificates or CRLs is refused, naming the usage."""
    with pytest.raises(IdentityError, match=f"has key usage {name}; an X.509-SVID leaf must not"):
        check_svid_leaf(_leaf(usage=usage), trust_domains=TRUSTED)


def test_a_non_spiffe_uri_is_refused() -> None:
    """The one URI SAN must be a SPIFFE ID."""
    with pytest.raises(IdentityError, match="scheme must be 'spiffe://'"):
        check_svid_leaf(_leaf(["https://orders.example/"]), trust_domains=TRUSTED)


# --------------------------------------------------------------------- PeerSVIDValidator


def test_validator_gives_the_id_for_der_and_pem() -> None:
    """validate_der and validate_pem (bytes or str) agree on a good leaf."""
    leaf = _leaf()
    validator = PeerSVIDValidator(TRUSTED)
    assert validator.validate_der(leaf.public_bytes(DER)) == SpiffeId.parse(ORDERS)
    assert validator.validate_pem(leaf.public_bytes(PEM)) == SpiffeId.parse(ORDERS)
    assert validator.validate_pem(leaf.public_bytes(PEM).decode()) == SpiffeId.parse(ORDERS)


@pytest.mark.parametrize(
    ("leaf", "reason"),
    [
        (lambda: _leaf(["spiffe://mesh.local"]), "non-empty path"),
        (lambda: _leaf(["spiffe://evil.example/ns/default/sa/x"]), "does not trust"),
        (lambda: _leaf(ca=True), "cA=true"),
        (lambda: _leaf(usage=_usage(cert_sign=True)), "keyCertSign"),
        (lambda: _leaf(usage=_usage(crl_sign=True)), "cRLSign"),
        (lambda: _leaf([ORDERS, ORDERS + "2"]), "2 URI SANs"),
    ],
)
def test_validator_refuses_each_rule_every_time(leaf, reason: str) -> None:
    """Each rule's refusal is remembered and raised again, with the same reason, on reuse."""
    der = leaf().public_bytes(DER)
    validator = PeerSVIDValidator(TRUSTED)
    for _ in range(2):
        with pytest.raises(IdentityError, match=reason):
            validator.validate_der(der)


def test_validator_trusts_only_its_trust_domains() -> None:
    """The same leaf passes a validator of its domain and fails one of another."""
    der = _leaf().public_bytes(DER)
    assert PeerSVIDValidator({"mesh.local"}).validate_der(der) == SpiffeId.parse(ORDERS)
    with pytest.raises(IdentityError, match=r"'mesh\.local', which this mesh does not trust"):
        PeerSVIDValidator({"other.example"}).validate_der(der)


def test_validator_refuses_bytes_that_are_no_certificate() -> None:
    """Garbage is refused as a certificate that does not parse, not with another exception."""
    validator = PeerSVIDValidator(TRUSTED)
    with pytest.raises(IdentityError, match="does not parse"):
        validator.validate_der(b"\x30\x03garbage")
    with pytest.raises(IdentityError, match="does not parse"):
        validator.validate_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_validator_remembers_verdicts_without_reparsing(monkeypatch) -> None:
    """A leaf seen before costs a lookup: check_svid_leaf runs once per distinct leaf."""
    import meshlib.identity.svid as svid_module

    calls: list[x509.Certificate] = []
    real = svid_module.check_svid_leaf

    def counting(cert: x509.Certificate, *, trust_domains: object) -> SpiffeId:
        calls.append(cert)
        return real(cert, trust_domains=trust_domains)  # type: ignore[arg-type]

    monkeypatch.setattr(svid_module, "check_svid_leaf", counting)
    validator = PeerSVIDValidator(TRUSTED)
    leaf = _leaf()
    for _ in range(5):
        validator.validate_der(leaf.public_bytes(DER))
        validator.validate_pem(leaf.public_bytes(PEM))
    assert len(calls) == 2  # once for the DER key, once for the PEM key


def test_validator_keeps_the_most_recently_used_leaves() -> None:
    """Past *capacity* the least recently used verdict is dropped, not the one in use."""
    validator = PeerSVIDValidator(TRUSTED, capacity=2)
    first, second, third = (_leaf().public_bytes(DER) for _ in range(3))
    validator.validate_der(first)
    validator.validate_der(second)
    validator.validate_der(first)  # first is now the most recent
    validator.validate_der(third)  # evicts second
    assert list(validator._verdicts) == [first, third]
