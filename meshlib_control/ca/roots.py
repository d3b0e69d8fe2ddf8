"""The CA's own material: a root created in the data dir, or a plugged-in CA loaded from files.

Either way the result is checked before it signs anything: it must be a CA, its key must
match, it must not have expired, a chain must be in order, and a SPIFFE ID it carries must
name this trust domain.
"""

from __future__ import annotations

import itertools
import secrets
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from meshlib.errors import ConfigError, MeshError
from meshlib.identity.keys import (
    generate_private_key,
    private_key_pem,
    write_private_file,
    write_public_file,
)
from meshlib.identity.spiffe import trust_domain_id
from meshlib.identity.svid import load_pem_certificates, spiffe_id_from_certificate

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CA_KEY_USAGE",
    "CLOCK_SKEW",
    "ROOT_VALIDITY",
    "CAMaterial",
    "load_material",
    "load_or_create_material",
    "make_root",
    "random_serial",
    "trust_domain_uri",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
ROOT_VALIDITY = timedelta(days=3650)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
# notBefore is back-dated so that a peer whose clock is a little behind accepts the cert.
CLOCK_SKEW = timedelta(seconds=60)


class CAMaterial(TypedDict):
    """What a :class:`~meshlib_control.ca.authority.CertificateAuthority` is built from."""

    signing_cert: x509.Certificate
    signing_key: CertificateIssuerPrivateKeyTypes
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]


def load_or_create_material(data_dir: Path, trust_domain: str) -> CAMaterial:
    """The CA material kept in *data_dir*: created on first start, loaded afterwards.

    First start makes a self-signed ECDSA P-256 root valid ten years and writes
    ``ca.pem`` (0644) and ``ca.key`` (0600). Later starts load them.

    Raises:
        ConfigError: only one of the two files exists, the key file is readable by
            group or others, the files do not form a CA, or the CA belongs to another
            trust domain.
    """
    trust_domain_uri(trust_domain)  # ConfigError naming trust_domain, before any write
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
    if cert_path.exists() or key_path.exists():
        if not (cert_path.exists() and key_path.exists()):
            present, missing = (
                (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
            )
            raise ConfigError(
                f"{present} exists but {missing} does not: refusing to create a new CA "
                "over half of an old one (restore the missing file, or delete both to "
                "start a new trust domain)"
            )
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{key_path} is accessible by group or others (mode {mode:04o}); "
                f"run: chmod 600 {key_path}"
            )
        return load_material(cert_path, key_path, trust_domain)

    root, key = make_root(trust_domain)
    # Key first: a crash in between leaves only ca.key, which the next start refuses
    # with a clear message rather than silently minting a second root.
    write_private_file(key_path, private_key_pem(key))
    write_public_file(cert_path, root.public_bytes(serialization.Encoding.PEM))
    return CAMaterial(signing_cert=root, signing_key=key, chain=(), roots=(root,))


def make_root(
    trust_domain: str,
    *,
    validity: timedelta = ROOT_VALIDITY,
    name: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed ECDSA P-256 root of *trust_domain* and its key.

    *name* is the common name (``meshlib root CA <trust domain>`` by default); give each
    root of a rotation its own (e.g. with the year) so that operators tell them apart.
    """
    td_uri = trust_domain_uri(trust_domain)
    key = generate_private_key()
    now = datetime.now(UTC)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name or f"meshlib root CA {trust_domain}")]
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        # path_length=1: the root may sign one intermediate layer (one per control
        # replica, `meshctl ca intermediate`), but never a chain of them.
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(td_uri)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return root, key


def load_material(
    cert_path: Path,
    key_path: Path,
    trust_domain: str,
    *,
    bundle_path: Path | None = None,
) -> CAMaterial:
    """The material of a plugged-in CA: a root, or an intermediate with its chain.

    *cert_path* holds the signing certificate first, then its issuers in order; the
    trust bundle is *bundle_path* when given, else the self-signed certificates at the
    end of *cert_path*.

    Raises:
        ConfigError: a file does not parse, the certificate is not a CA or has
            expired, the key does not match it, the chain is out of order, there is
            no root to trust, or the CA's SPIFFE ID names another trust domain.
    """
    td_uri = trust_domain_uri(trust_domain)
    try:
        certs = load_pem_certificates(Path(cert_path).read_bytes())
    except (OSError, MeshError) as exc:
        raise ConfigError(f"CA certificate {cert_path}: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"CA key {key_path}: does not load: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ConfigError(f"CA key {key_path}: must be ECDSA or RSA")

    signing = certs[0]
    check_is_ca(signing, cert_path)
    if public_der(key.public_key()) != public_der(signing.public_key()):
        raise ConfigError(
            f"CA key {key_path} does not match the certificate in {cert_path} "
            "(different public keys)"
        )
    now = datetime.now(UTC)
    if signing.not_valid_after_utc <= now:
        raise ConfigError(
            f"CA certificate {cert_path} expired at {signing.not_valid_after_utc.isoformat()}"
        )
    check_trust_domain(signing, td_uri, cert_path)
    for child, parent in itertools.pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ConfigError(
                f"CA certificate chain in {cert_path} is out of order: "
                f"{child.subject.rfc4514_string()!r} is not issued by "
                f"{parent.subject.rfc4514_string()!r}"
            ) from exc

    if bundle_path is not None:
        try:
            roots = tuple(load_pem_certificates(Path(bundle_path).read_bytes()))
        except (OSError, MeshError) as exc:
            raise ConfigError(f"trust bundle {bundle_path}: {exc}") from exc
    else:
        roots = tuple(c for c in certs if c.issuer == c.subject)
        if not roots:
            raise ConfigError(
                f"{cert_path} holds no self-signed root: append the root certificate "
                "(signing certificate first, root last) or pass a trust bundle"
            )
    # Leaves carry the intermediates; roots stay out (peers already trust them).
    chain = tuple(c for c in certs if c.issuer != c.subject)
    return CAMaterial(
        signing_cert=signing,
        signing_key=key,
        chain=chain,
        roots=roots,
    )


def public_der(key: CertificatePublicKeyTypes) -> bytes:
    """*key* as DER SubjectPublicKeyInfo (to compare two keys)."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def random_serial() -> int:
    """A random positive 128-bit certificate serial number."""
    while True:
        serial = secrets.randbits(128)
        if serial:  # RFC 5280: positive
            return serial


def trust_domain_uri(trust_domain: str) -> str:
    """``spiffe://<trust_domain>``, or ConfigError naming ``trust_domain``."""
    try:
        return trust_domain_id(trust_domain)
    except MeshError as exc:
        raise ConfigError(f"trust_domain: {exc}") from exc


def check_is_ca(cert: x509.Certificate, path: Path) -> None:
    """ConfigError unless *cert* (read from *path*) may sign certificates."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ConfigError(
            f"{path} is not a CA certificate (no basicConstraints extension)"
        ) from None
    if not constraints.ca:
        raise ConfigError(f"{path} is not a CA certificate (basicConstraints cA is false)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise ConfigError(f"{path} is not a CA certificate (keyUsage lacks keyCertSign)")


def check_trust_domain(cert: x509.Certificate, td_uri: str, path: Path) -> None:
    """ConfigError when *cert* carries a SPIFFE ID of a trust domain other than *td_uri*."""
    try:
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return  # SPIFFE only recommends that signing certificates carry an ID.
    try:
        ca_id = spiffe_id_from_certificate(cert)
    except MeshError as exc:
        raise ConfigError(f"CA certificate {path}: {exc}") from exc
    if ca_id.trust_domain_id != td_uri:
        raise ConfigError(
            f"CA certificate {path} belongs to {ca_id.trust_domain_id}, not {td_uri} "
            "(check --trust-domain)"
        )
