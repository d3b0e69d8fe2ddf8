"""X.509-SVIDs: this workload's certificate, key and trust bundle, and peer identities.

Every validator here rejects a certificate with more than one URI SAN: the SPIFFE
X.509-SVID standard requires it, and neither OpenSSL nor Envoy enforces it.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)

from meshlib.errors import IdentityError
from meshlib.identity.spiffe import SpiffeId

__all__ = [
    "DEFAULT_RENEWAL_JITTER",
    "SVID",
    "PeerSVIDValidator",
    "certificate_fingerprint",
    "check_svid_leaf",
    "load_pem_certificates",
    "spiffe_id_from_certificate",
    "spiffe_id_from_peercert",
]

# Renew at 50 % of the lifetime, +/- this fraction of the lifetime, so that a fleet
# started together does not renew together.
DEFAULT_RENEWAL_JITTER = 0.05

_PEM_BEGIN = b"-----BEGIN"


def load_pem_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in *pem*, in order.

    Raises:
        IdentityError: *pem* holds no certificate or one that does not parse.
    """
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise IdentityError(f"not a PEM certificate list: {exc}") from exc


def certificate_fingerprint(cert_or_pem: x509.Certificate | bytes) -> str:
    """``sha256:<hex>`` of the certificate's DER encoding.

    *cert_or_pem* is a certificate, PEM bytes (the first certificate counts) or DER bytes.
    """
    if isinstance(cert_or_pem, x509.Certificate):
        der = cert_or_pem.public_bytes(serialization.Encoding.DER)
    elif cert_or_pem.lstrip().startswith(_PEM_BEGIN):
        der = load_pem_certificates(cert_or_pem)[0].public_bytes(serialization.Encoding.DER)
    else:
        der = bytes(cert_or_pem)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def spiffe_id_from_certificate(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID carried by *cert*'s single URI SAN.

    Raises:
        IdentityError: no SAN extension, zero or several URI SANs, or an invalid ID.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(
            "certificate has no subjectAltName; an X.509-SVID must have exactly one URI SAN"
        ) from None
    except ValueError as exc:  # duplicate or malformed extensions
        raise IdentityError(f"certificate extensions do not parse: {exc}") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise IdentityError(
            f"certificate has {len(uris)} URI SANs; an X.509-SVID must have exactly one"
        )
    return SpiffeId.parse(uris[0])


def spiffe_id_from_peercert(peercert: Mapping[str, Any] | None) -> str:
    """The peer's SPIFFE ID from ``ssl.SSLObject.getpeercert()``'s dict, as a string.

    This is the request hot path: it reads the already-decoded dict and does no
    certificate parsing.

    Raises:
        IdentityError: no certificate, no URI SAN, several URI SANs or a non-SPIFFE URI.
    """
    if not peercert:
        raise IdentityError("the peer presented no certificate")
    uri: str | None = None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI":
            if uri is not None:
                count = sum(1 for k, _ in peercert["subjectAltName"] if k == "URI")
                raise IdentityError(
                    f"certificate has {count} URI SANs; an X.509-SVID must have exactly one"
                )
            uri = value
    if uri is None:
        raise IdentityError("the peer certificate has no URI SAN, so no SPIFFE ID")
    if not uri.startswith("spiffe://") or len(uri) <= len("spiffe://"):
        raise IdentityError(f"the peer certificate's URI SAN {uri!r} is not a SPIFFE ID")
    return uri


def check_svid_leaf(cert: x509.Certificate, *, trust_domains: Collection[str]) -> SpiffeId:
    """Validate *cert* as a peer's X.509-SVID leaf and return its SPIFFE ID.

    The checks are those the X.509-SVID standard says a validator MUST make on a leaf,
    beyond the chain to a trusted root that TLS has already verified:

    * exactly one URI SAN holding a valid SPIFFE ID with a non-empty path (the bare
      trust-domain ID ``spiffe://td`` names no workload);
    * the ID's trust domain is one of *trust_domains* (this mesh's own, or a federated
      one): a root trusted by the mesh must not vouch for another trust domain's names;
    * the leaf is not a CA (``basicConstraints`` absent or ``cA=false``) and its key usage,
      when present, includes neither ``keyCertSign`` nor ``cRLSign``.

    Raises:
        IdentityError: naming the first rule the certificate breaks.
    """
    spiffe_id = spiffe_id_from_certificate(cert)
    if not spiffe_id.path:
        raise IdentityError(
            f"certificate's SPIFFE ID {spiffe_id} is a trust domain's own ID, not a workload's: "
            "an X.509-SVID leaf must have a non-empty path"
        )
    if spiffe_id.trust_domain not in trust_domains:
        allowed = ", ".join(sorted(trust_domains)) or "none"
        raise IdentityError(
            f"certificate's SPIFFE ID {spiffe_id} is in trust domain "
            f"{spiffe_id.trust_domain!r}, which this mesh does not trust (trusted: {allowed})"
        )
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise IdentityError(
            f"certificate of {spiffe_id} is a CA certificate (basicConstraints cA=true); "
            "an X.509-SVID leaf must not be"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and (usage.key_cert_sign or usage.crl_sign):
        which = "keyCertSign" if usage.key_cert_sign else "cRLSign"
        raise IdentityError(
            f"certificate of {spiffe_id} has key usage {which}; an X.509-SVID leaf must not"
        )
    return spiffe_id


class PeerSVIDValidator:
    """:func:`check_svid_leaf` over DER leaves, remembering recent verdicts.

    Servers see the same peer leaf on every connection (and gRPC on every call) until it
    rotates; parsing it once and keeping the verdict for the *capacity* most recently used
    leaves makes the check a dict lookup on the hot path. Verdicts never go stale: a
    certificate's content, and so its verdict, cannot change for a given DER, and expiry is
    TLS's check.

    Args:
        trust_domains: the trust domains whose IDs peers may carry.
        capacity: how many distinct leaves to remember.
    """

    def __init__(self, trust_domains: Collection[str], *, capacity: int = 1024) -> None:
        self.trust_domains = frozenset(trust_domains)
        self._capacity = capacity
        self._verdicts: OrderedDict[bytes, SpiffeId | IdentityError] = OrderedDict()
        self._lock = threading.Lock()

    def validate_der(self, der: bytes) -> SpiffeId:
        """The SPIFFE ID of the DER leaf *der*, or raise why it is no valid SVID.

        Raises:
            IdentityError: the leaf does not parse or breaks a rule of :func:`check_svid_leaf`.
        """
        return self._verdict(der, self._judge)

    def validate_pem(self, pem: bytes | str) -> SpiffeId:
        """:meth:`validate_der` for the first certificate of a PEM text.

        The verdict is remembered under the PEM text itself, so gRPC's per-call
        ``x509_pem_cert`` costs a lookup, not a parse, once seen.
        """
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        return self._verdict(data, self._judge_pem)

    def _verdict(self, key: bytes, judge: Callable[[bytes], SpiffeId | IdentityError]) -> SpiffeId:
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is not None:
                self._verdicts.move_to_end(key)
        if verdict is None:
            verdict = judge(key)  # outside the lock: parsing may take a while
            with self._lock:
                self._verdicts[key] = verdict
                while len(self._verdicts) > self._capacity:
                    self._verdicts.popitem(last=False)
        if isinstance(verdict, IdentityError):
            raise IdentityError(str(verdict))
        return verdict

    def _judge_pem(self, pem: bytes) -> SpiffeId | IdentityError:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            return IdentityError(f"the peer certificate does not parse: {exc}")
        return self._check(cert)

    def _judge(self, der: bytes) -> SpiffeId | IdentityError:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            return IdentityError(f"the peer certificate does not parse: {exc}")
        return self._check(cert)

    def _check(self, cert: x509.Certificate) -> SpiffeId | IdentityError:
        try:
            return check_svid_leaf(cert, trust_domains=self.trust_domains)
        except IdentityError as exc:
            return exc


def _public_der(key: CertificatePublicKeyTypes | PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True, slots=True, repr=False)
class SVID:
    """One X.509-SVID with its private key and trust bundle.

    ``repr()`` never shows the key. Build it with :meth:`from_pem`, which validates.

    Attributes:
        cert_chain_pem: the leaf first, then any intermediates.
        key_pem: the leaf's private key (PKCS#8 PEM).
        bundle_pem: one or more trusted roots.
        spiffe_id: the ID of the leaf's URI SAN.
        serial: the leaf's serial number.
        not_before: start of validity, aware UTC.
        not_after: end of validity, aware UTC.
    """

    cert_chain_pem: bytes
    key_pem: bytes = field(repr=False)
    bundle_pem: bytes
    spiffe_id: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime

    @classmethod
    def from_pem(cls, cert_chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> SVID:
        """Validate and assemble an SVID.

        Raises:
            IdentityError: the chain or bundle does not parse, the leaf does not carry
                exactly one URI SAN, the key does not parse or does not match the leaf.
        """
        leaf = load_pem_certificates(cert_chain_pem)[0]
        try:
            load_pem_certificates(bundle_pem)
        except IdentityError as exc:
            raise IdentityError(f"trust bundle: {exc}") from exc
        spiffe_id = spiffe_id_from_certificate(leaf)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            # Never echo the key material; the exception text of cryptography doesn't.
            raise IdentityError(f"the SVID private key does not parse: {exc}") from None
        if _public_der(key.public_key()) != _public_der(leaf.public_key()):
            raise IdentityError(
                f"the private key does not match the certificate of {spiffe_id} "
                f"(serial {leaf.serial_number:x})"
            )
        return cls(
            cert_chain_pem=cert_chain_pem,
            key_pem=key_pem,
            bundle_pem=bundle_pem,
            spiffe_id=spiffe_id,
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )

    def with_bundle(self, bundle_pem: bytes) -> SVID:
        """This SVID trusting *bundle_pem* instead (a root added or retired).

        Raises:
            IdentityError: the bundle holds no certificate, one that does not parse, or
                one that is not a CA certificate.
        """
        try:
            roots = load_pem_certificates(bundle_pem)
        except IdentityError as exc:
            raise IdentityError(f"trust bundle: {exc}") from exc
        for index, root in enumerate(roots):
            try:
                is_ca = root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                raise IdentityError(f"trust bundle: certificate {index} is not a CA certificate")
        return replace(self, bundle_pem=bundle_pem)

    @property
    def lifetime(self) -> timedelta:
        """``not_after - not_before``."""
        return self.not_after - self.not_before

    def is_expired(self, now: datetime) -> bool:
        """True once *now* (aware) has reached ``not_after``."""
        return now >= self.not_after

    def renewal_time(
        self,
        *,
        jitter: float = DEFAULT_RENEWAL_JITTER,
        rand: Callable[[], float] = random.random,
    ) -> datetime:
        """When to renew: at 50 % of the lifetime, +/- *jitter* of the lifetime.

        Args:
            jitter: fraction of the lifetime, 0 <= jitter < 0.5.
            rand: a uniform [0, 1) source, replaceable in tests.
        """
        fraction = 0.5 + jitter * (2.0 * rand() - 1.0)
        return self.not_before + self.lifetime * fraction

    def __repr__(self) -> str:
        return (
            f"SVID(spiffe_id={str(self.spiffe_id)!r}, serial={self.serial:#x}, "
            f"not_before={self.not_before.isoformat()}, "
            f"not_after={self.not_after.isoformat()})"
        )
