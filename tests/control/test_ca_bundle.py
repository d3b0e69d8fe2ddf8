"""The trust bundle, the offline root and per-replica intermediates, and `meshctl ca`."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from meshlib.errors import ConfigError, PolicyError
from meshlib.identity.keys import build_csr, generate_private_key
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import certificate_fingerprint, load_pem_certificates
from meshlib.policy.snapshot import InboundPolicy, Snapshot, decode_snapshot, encode_snapshot
from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.ca.bundle import MAX_ROOTS, BundleError, TrustBundle
from meshlib_control.ca.offline import init_root, issue_intermediate
from meshlib_control.ca.roots import make_root

TD = "mesh.local"
ORDERS = SpiffeId.for_service(TD, "default", "orders")
ROOT = Path(__file__).resolve().parents[2]


def _now() -> datetime:
    """Now, per call: a module-level constant is minutes old by the time a test runs."""
    return datetime.now(UTC)


def _root(name: str = "r", td: str = TD) -> x509.Certificate:
    return make_root(td, name=name)[0]


# ---------------------------------------------------------------- the bundle


def test_bundle_adds_a_root_beside_the_first() -> None:
    """A root added keeps the first; both are served, oldest first."""
    a, b = _root("A"), _root("B")
    bundle = TrustBundle((a,)).with_root(b, trust_domain=TD, now=_now())
    assert bundle.roots == (a, b)
    assert bundle.fingerprints == (certificate_fingerprint(a), certificate_fingerprint(b))
    assert TrustBundle.from_pem(bundle.pem).roots == (a, b)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("intermediate", "not a self-signed root"),
        ("leaf", "not a CA"),
        ("expired", "expired at"),
        ("other-domain", "belongs to spiffe://other.example"),
        ("duplicate", "already in the trust bundle"),
    ],
)
def test_bundle_refuses_what_is_not_a_new_root(tmp_path: Path, make: str, reason: str) -> None:
    """Intermediates, leaves, expired roots, another domain's root and duplicates are
    refused with the field named; the bundle is unchanged (it is a value)."""
    a_cert = _root("A")
    bundle = TrustBundle((a_cert,))
    if make == "intermediate":
        init_root(tmp_path / "root", TD)
        issue_intermediate(tmp_path / "root", tmp_path / "int", TD, name="r1")
        cert = load_pem_certificates((tmp_path / "int" / "ca.pem").read_bytes())[0]
    elif make == "leaf":
        # Self-signed, but not a CA (basicConstraints cA false).
        key = generate_private_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leafy")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - timedelta(minutes=1))
            .not_valid_after(_now() + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
    elif make == "expired":
        cert = make_root(TD, validity=timedelta(seconds=1))[0]
        later = _now() + timedelta(minutes=5)
        with pytest.raises(BundleError, match=reason) as info:
            bundle.with_root(cert, trust_domain=TD, now=later)
        assert info.value.field == "cert"
        return
    elif make == "other-domain":
        cert = _root("O", td="other.example")
    else:
        cert = a_cert
    with pytest.raises(BundleError, match=reason) as info:
        bundle.with_root(cert, trust_domain=TD, now=_now())
    assert info.value.field == "cert"
    assert str(info.value).startswith("cert: ")
    assert bundle.roots == (a_cert,)


def test_bundle_holds_at_most_max_roots() -> None:
    """The bundle (and so a join token's pins) is bounded."""
    bundle = TrustBundle(tuple(_root(str(i)) for i in range(MAX_ROOTS)))
    with pytest.raises(BundleError, match=f"already holds {MAX_ROOTS} roots"):
        bundle.with_root(_root("one too many"), trust_domain=TD, now=_now())


def test_retiring_refuses_the_signing_root_the_last_and_unknown_roots() -> None:
    """The signing root and the last root are conflicts; an unknown fingerprint is named."""
    a, b = _root("A"), _root("B")
    bundle = TrustBundle((a, b))
    with pytest.raises(BundleError, match="signs from") as info:
        bundle.without(certificate_fingerprint(a), signing_root=a)
    assert info.value.conflict and info.value.field == "fingerprint"
    with pytest.raises(BundleError, match="no root 'sha256:00'") as info:
        bundle.without("sha256:00", signing_root=a)
    assert not info.value.conflict
    only_a = bundle.without(certificate_fingerprint(b).removeprefix("sha256:"), signing_root=a)
    assert only_a.roots == (a,)
    with pytest.raises(BundleError, match="would be empty"):
        only_a.without(certificate_fingerprint(a), signing_root=b)


def test_bundle_pem_that_does_not_parse_names_the_field() -> None:
    """Garbage where a bundle is stored is a BundleError naming the field."""
    with pytest.raises(BundleError, match="stored trust bundle: "):
        TrustBundle.from_pem("not pem", field="stored trust bundle")


# ---------------------------------------------------------------- root and intermediates


def test_intermediate_chain_signs_leaves_that_verify_to_the_root(tmp_path: Path) -> None:
    """A replica's CA from `ca intermediate` serves leaf + intermediate; the leaf verifies
    to the root in the bundle (a real X.509 path validation), and the root is its anchor."""
    root = init_root(tmp_path / "root", TD, name="root 2026")
    issue_intermediate(tmp_path / "root", tmp_path / "r1", TD, name="replica-1")
    ca = CertificateAuthority.from_files(tmp_path / "r1" / "ca.pem", tmp_path / "r1" / "ca.key", TD)
    assert ca.root == root.cert
    assert ca.bundle.roots == (root.cert,)
    assert ca.chain[0].subject.rfc4514_string() == "CN=meshlib intermediate replica-1"
    constraints = ca.chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    issued = ca.sign_csr(
        build_csr(generate_private_key(), ORDERS), entitled=ORDERS, ttl=timedelta(hours=1)
    )
    leaf, *intermediates = load_pem_certificates(issued.cert_pem)
    assert intermediates == [ca.chain[0]]  # the chain travels with the leaf
    verifier = PolicyBuilder().store(Store([root.cert])).build_client_verifier()
    verified = verifier.verify(leaf, intermediates)
    assert verified.chain[-1] == root.cert
    assert (tmp_path / "root" / "root.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "r1" / "ca.key").stat().st_mode & 0o077 == 0


def test_intermediate_never_outlives_its_root(tmp_path: Path) -> None:
    """Asked for longer than the root lives, the intermediate ends with the root."""
    root = init_root(tmp_path / "root", TD, validity=timedelta(days=10))
    written = issue_intermediate(
        tmp_path / "root", tmp_path / "r1", TD, name="r1", validity=timedelta(days=365)
    )
    assert written.cert.not_valid_after_utc == root.cert.not_valid_after_utc


def test_offline_commands_refuse_overwrites_and_missing_roots(tmp_path: Path) -> None:
    """CA material is never overwritten; a missing root dir and a bad name are named."""
    init_root(tmp_path / "root", TD)
    before = (tmp_path / "root" / "root.pem").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        init_root(tmp_path / "root", TD)
    assert (tmp_path / "root" / "root.pem").read_bytes() == before
    with pytest.raises(ConfigError, match=r"--root: .* must hold root\.pem and root\.key"):
        issue_intermediate(tmp_path / "nothing", tmp_path / "r1", TD, name="r1")
    with pytest.raises(ConfigError, match="--name"):
        issue_intermediate(tmp_path / "root", tmp_path / "r1", TD, name=" ")
    assert not (tmp_path / "r1" / "ca.pem").exists()
    with pytest.raises(ConfigError, match=r"belongs to spiffe://mesh\.local"):
        issue_intermediate(tmp_path / "root", tmp_path / "r2", "other.example", name="r2")


def test_meshctl_ca_init_and_intermediate(tmp_path: Path) -> None:
    """`meshctl ca init` prints the root's fingerprint; `intermediate` the flags to use;
    a second init into the same directory exits 1 with the reason."""

    def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshlib_control.cli", "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    done = meshctl("ca", "init", "--out", str(tmp_path / "root"), "--validity", "30d")
    assert done.returncode == 0, done.stderr
    cert = load_pem_certificates((tmp_path / "root" / "root.pem").read_bytes())[0]
    assert f"root {certificate_fingerprint(cert)}" in done.stdout
    again = meshctl("ca", "init", "--out", str(tmp_path / "root"))
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = meshctl("ca", "init", "--out", str(tmp_path / "x"), "--validity", "soon")
    assert bad.returncode == 1 and "--validity: ttl: expected a duration" in bad.stderr
    inter = meshctl(
        "ca", "intermediate", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "r1"),
        "--name", "r1",
    )  # fmt: skip
    assert inter.returncode == 0, inter.stderr
    assert f"--ca-cert {tmp_path / 'r1' / 'ca.pem'}" in inter.stdout


# ---------------------------------------------------------------- the snapshot carries it


def _snapshot(bundle: str) -> Snapshot:
    return Snapshot(
        version="v",
        trust_domain=TD,
        service="orders",
        namespace="default",
        inbound=InboundPolicy(),
        services=(),
        trust_bundle=bundle,
    )


def test_snapshot_carries_the_bundle_and_old_snapshots_keep_their_form() -> None:
    """trustBundle round-trips; a snapshot without one encodes as before."""
    pem = TrustBundle((_root("A"), _root("B"))).pem.decode()
    encoded = encode_snapshot(_snapshot(pem))
    assert encoded["trustBundle"] == pem
    assert decode_snapshot(encoded).trust_bundle == pem
    assert "trustBundle" not in encode_snapshot(_snapshot(""))
    assert decode_snapshot(encode_snapshot(_snapshot(""))).trust_bundle == ""


@pytest.mark.parametrize("value", [17, "", "no certificates here", None])
def test_snapshot_with_a_bad_bundle_is_refused_naming_the_field(value: object) -> None:
    """A trustBundle that is not PEM certificates fails the whole snapshot, at its path."""
    encoded = encode_snapshot(_snapshot(""))
    encoded["trustBundle"] = value
    with pytest.raises(PolicyError) as info:
        decode_snapshot(encoded)
    assert info.value.path == "trustBundle"


def test_ca_root_is_the_signing_root_not_the_first_of_the_bundle(tmp_path: Path) -> None:
    """With a bundle of A then B and signing from B's intermediate, root is B."""
    a = init_root(tmp_path / "a", TD, name="A")
    b = init_root(tmp_path / "b", TD, name="B")
    issue_intermediate(tmp_path / "b", tmp_path / "rb", TD, name="rb")
    bundle = tmp_path / "bundle.pem"
    pem = serialization.Encoding.PEM
    bundle.write_bytes(a.cert.public_bytes(pem) + b.cert.public_bytes(pem))
    ca = CertificateAuthority.from_files(
        tmp_path / "rb" / "ca.pem", tmp_path / "rb" / "ca.key", TD, bundle_path=bundle
    )
    assert ca.root == b.cert
    assert ca.fingerprint == certificate_fingerprint(b.cert)
    assert ca.bundle_fingerprints == (
        certificate_fingerprint(a.cert),
        certificate_fingerprint(b.cert),
    )
    with pytest.raises(ConfigError, match="lacks 'B'"):
        ca.use_bundle(TrustBundle((a.cert,)))
    assert ca.bundle.roots == (a.cert, b.cert)
