"""PURE: the trust bundle, the roots every workload and sidecar trusts.

The bundle may hold several roots, so a root is rotated with overlap: add the new root
beside the old one, switch signing to it, let the old SVIDs age out, retire the old root
(docs/operations.md, "Rotating the root"). It is public material only (certificates, no
key), kept in the store so that every control replica serves the same bundle, and it
travels in every snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from meshlib.errors import ConfigError, MeshError
from meshlib.identity.spiffe import trust_domain_id
from meshlib.identity.svid import certificate_fingerprint, spiffe_id_from_certificate

__all__ = [
    "BUNDLE_META_KEY",
    "MAX_ROOTS",
    "BundleError",
    "TrustBundle",
    "anchor_of",
    "describe",
]

BUNDLE_META_KEY = "trust_bundle"
MAX_ROOTS = 8  # a join token carries one fingerprint per root: keep it short


class BundleError(ConfigError):
    """A change to the trust bundle was refused; ``field`` names what is wrong.

    ``conflict`` is True when the input is fine but the bundle's state forbids the change
    (the root in use for signing, the last root).
    """

    def __init__(self, field: str, reason: str, *, conflict: bool = False) -> None:
        self.field = field
        self.reason = reason
        self.conflict = conflict
        super().__init__(f"{field}: {reason}")


def describe(cert: x509.Certificate) -> str:
    """The certificate's common name (or its whole subject) and fingerprint, for messages."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    label = str(names[0].value) if names else cert.subject.rfc4514_string()
    return f"{label!r} ({certificate_fingerprint(cert)[:19]}…)"


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def anchor_of(top: x509.Certificate, roots: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """The root among *roots* that *top* is (self-signed) or that directly issued *top*."""
    for root in roots:
        if root == top:
            return root
        if top.issuer != root.subject:
            continue
        try:
            top.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return root
    return None


def check_root(cert: x509.Certificate, trust_domain: str, now: datetime, field: str) -> None:
    """BundleError unless *cert* can be a root of *trust_domain*'s bundle at *now*."""
    what = describe(cert)
    if not _is_self_signed(cert):
        raise BundleError(field, f"{what} is not a self-signed root certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise BundleError(field, f"{what} is not a CA (no basicConstraints)") from None
    if not constraints.ca:
        raise BundleError(field, f"{what} is not a CA (basicConstraints cA is false)")
    if cert.not_valid_after_utc <= now:
        raise BundleError(field, f"{what} expired at {cert.not_valid_after_utc.isoformat()}")
    if cert.not_valid_before_utc > now:
        raise BundleError(
            field, f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    try:
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return  # SPIFFE only recommends that CA certificates carry an ID
    try:
        ca_id = spiffe_id_from_certificate(cert)
    except MeshError as exc:
        raise BundleError(field, f"{what}: {exc}") from exc
    if ca_id.trust_domain_id != trust_domain_id(trust_domain):
        raise BundleError(
            field, f"{what} belongs to {ca_id.trust_domain_id}, not spiffe://{trust_domain}"
        )


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """One or more roots, in the order they were added (oldest first)."""

    roots: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem(cls, pem: bytes | str, *, field: str = "bundle") -> TrustBundle:
        """Parse a PEM bundle (as stored); BundleError naming *field* when it does not parse."""
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            roots = tuple(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise BundleError(field, f"not PEM certificates: {exc}") from None
        if not roots:
            raise BundleError(field, "holds no certificate")
        return cls(roots)

    @property
    def pem(self) -> bytes:
        """The roots as concatenated PEM."""
        return b"".join(r.public_bytes(serialization.Encoding.PEM) for r in self.roots)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """``sha256:<hex>`` of each root's DER, in bundle order."""
        return tuple(certificate_fingerprint(r) for r in self.roots)

    def find(self, fingerprint: str) -> x509.Certificate | None:
        """The root whose fingerprint is *fingerprint* (``sha256:`` prefix optional)."""
        wanted = fingerprint.strip().lower()
        if not wanted.startswith("sha256:"):
            wanted = "sha256:" + wanted
        for root in self.roots:
            if certificate_fingerprint(root) == wanted:
                return root
        return None

    def with_root(self, cert: x509.Certificate, *, trust_domain: str, now: datetime) -> TrustBundle:
        """This bundle plus *cert*.

        Raises:
            BundleError: (field ``cert``) *cert* is not a valid root of *trust_domain*, is
                already in the bundle, or the bundle already holds :data:`MAX_ROOTS` roots.
        """
        check_root(cert, trust_domain, now, "cert")
        if cert in self.roots:
            raise BundleError("cert", f"{describe(cert)} is already in the trust bundle")
        if len(self.roots) >= MAX_ROOTS:
            raise BundleError(
                "cert", f"the trust bundle already holds {MAX_ROOTS} roots; retire one first"
            )
        return TrustBundle((*self.roots, cert))

    def without(self, fingerprint: str, *, signing_root: x509.Certificate) -> TrustBundle:
        """This bundle less the root *fingerprint*.

        Raises:
            BundleError: (field ``fingerprint``) no such root, it is the root this replica
                signs from (switch signing first), or it is the last root.
        """
        root = self.find(fingerprint)
        if root is None:
            known = ", ".join(self.fingerprints)
            raise BundleError("fingerprint", f"no root {fingerprint!r} in the bundle ({known})")
        if root == signing_root:
            raise BundleError(
                "fingerprint",
                f"{describe(root)} is the root this control replica signs from: switch "
                "signing to another root first (meshctl ca intermediate, then restart the "
                "replica with --ca-cert/--ca-key)",
                conflict=True,
            )
        if len(self.roots) == 1:
            raise BundleError("fingerprint", "the trust bundle would be empty", conflict=True)
        return TrustBundle(tuple(r for r in self.roots if r != root))
