"""The CA's refusals: which CSRs and lifetimes it will not sign, and why."""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from meshlib.errors import MeshError
from meshlib.identity.spiffe import SpiffeId

__all__ = ["CSRRejected", "check_csr_names", "check_ttl", "describe_key"]


class CSRRejected(MeshError):
    """The CA refused to sign a CSR; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"CSR rejected: {reason}")


def describe_key(key: CertificatePublicKeyTypes) -> str:
    """A short name of *key*'s type and size, for refusal messages (``RSA-2048``)."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def check_ttl(ttl: timedelta, maximum: timedelta) -> str | None:
    """Why *ttl* is not a lifetime in (0, *maximum*], or None when it is."""
    if ttl <= timedelta(0):
        return f"ttl must be > 0, got {ttl}"
    if ttl > maximum:
        return f"ttl must be at most {maximum.days} days, got {ttl}"
    return None


def check_csr_names(csr: x509.CertificateSigningRequest, entitled: SpiffeId) -> None:
    """CSRRejected unless *csr* asks for exactly *entitled*'s URI SAN and DNS name."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CSRRejected(
            f"CSR has no URI SAN; it must ask for {entitled}, the identity the caller is "
            "entitled to"
        ) from None
    except x509.DuplicateExtension as exc:
        raise CSRRejected(
            f"CSR has the extension {exc.oid.dotted_string} more than once; each extension "
            "may appear once (RFC 5280 4.2)"
        ) from None
    except ValueError as exc:
        raise CSRRejected(f"CSR extensions do not parse: {exc}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) > 1:
        raise CSRRejected(f"CSR has {len(uris)} URI SANs; an X.509-SVID must have exactly one")
    if not uris:
        raise CSRRejected(
            f"CSR has no URI SAN; it must ask for {entitled}, the identity the caller is "
            "entitled to"
        )
    if uris[0] != str(entitled):
        raise CSRRejected(f"CSR asks for {uris[0]} but the caller is entitled to {entitled}")
    allowed = {entitled.dns_name} if entitled.dns_name else set()
    for name in san:
        if isinstance(name, x509.UniformResourceIdentifier):
            continue
        if isinstance(name, x509.DNSName):
            if name.value not in allowed:
                expected = entitled.dns_name or "none"
                raise CSRRejected(
                    f"CSR asks for DNS name {name.value!r}; the only one allowed for "
                    f"{entitled} is {expected}"
                )
            continue
        raise CSRRejected(
            f"CSR asks for a {type(name).__name__} SAN; only the SPIFFE URI and the "
            "workload's DNS name are issued"
        )
