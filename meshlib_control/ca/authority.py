"""The mesh certificate authority: a root it creates itself, or a CA plugged in from files.

It signs CSRs into X.509-SVIDs that follow the SPIFFE profile exactly (DESIGN.md,
invariant 2) and refuses every CSR that would produce anything else. It copies nothing
from a CSR but its public key: the identity comes from what the caller is *entitled* to,
and every extension is the CA's own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlib.errors import ConfigError
from meshlib.identity.keys import (
    generate_private_key,
    private_key_pem,
)
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import (
    certificate_fingerprint,
)
from meshlib_control.ca.bundle import TrustBundle, anchor_of, describe
from meshlib_control.ca.csr import CSRRejected, check_csr_names, check_ttl, describe_key
from meshlib_control.ca.roots import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CLOCK_SKEW,
    ROOT_VALIDITY,
    load_material,
    load_or_create_material,
    random_serial,
)

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CLOCK_SKEW",
    "MAX_LOCAL_TTL",
    "MAX_SVID_TTL",
    "ROOT_VALIDITY",
    "CSRRejected",
    "CertificateAuthority",
    "IssuedCertificate",
]

MAX_SVID_TTL = timedelta(days=30)
# The control service's own and the admin certificate: keys generated here, never sent.
MAX_LOCAL_TTL = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate the CA issued.

    Attributes:
        cert_pem: the leaf, then the issuing chain when the CA is an intermediate
            (just the leaf for a root CA).
        serial: the leaf's serial number.
        spiffe_id: the leaf's SPIFFE ID.
        not_before: start of validity, aware UTC.
        not_after: end of validity, aware UTC.
    """

    cert_pem: bytes
    serial: int
    spiffe_id: str
    not_before: datetime
    not_after: datetime


class CertificateAuthority:
    """Signs X.509-SVIDs for one trust domain.

    Build it with :meth:`load_or_create` (a root kept in the data directory) or
    :meth:`from_files` (a plugged-in root or intermediate).
    """

    def __init__(
        self,
        *,
        trust_domain: str,
        signing_cert: x509.Certificate,
        signing_key: CertificateIssuerPrivateKeyTypes,
        chain: tuple[x509.Certificate, ...],
        roots: tuple[x509.Certificate, ...],
    ) -> None:
        self._trust_domain = trust_domain
        self._cert = signing_cert
        self._key = signing_key
        self._chain = chain
        anchor = anchor_of(chain[-1] if chain else signing_cert, roots)
        if anchor is None:
            raise ConfigError(
                f"the signing CA {describe(signing_cert)} does not chain to a root of its "
                "trust bundle (give the chain up to the root, or the root's bundle)"
            )
        self._signing_root = anchor
        self._chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        # The bundle changes at run time (roots added and retired); one assignment
        # publishes a new one.
        self._bundle = TrustBundle(roots)
        self._bundle_pem = self._bundle.pem
        try:
            ski = signing_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key())

    # ------------------------------------------------------------------ construction

    @classmethod
    def load_or_create(cls, data_dir: Path, trust_domain: str) -> CertificateAuthority:
        """The CA kept in *data_dir*: created on first start, loaded afterwards.

        First start makes a self-signed ECDSA P-256 root valid ten years and writes
        ``ca.pem`` (0644) and ``ca.key`` (0600). Later starts load them.

        Raises:
            ConfigError: only one of the two files exists, the key file is readable by
                group or others, the files do not form a CA, or the CA belongs to another
                trust domain.
        """
        return cls(trust_domain=trust_domain, **load_or_create_material(data_dir, trust_domain))

    @classmethod
    def from_files(
        cls,
        cert_path: Path,
        key_path: Path,
        trust_domain: str,
        *,
        bundle_path: Path | None = None,
    ) -> CertificateAuthority:
        """A plugged-in CA: a root, or an intermediate with its chain.

        *cert_path* holds the signing certificate first, then its issuers in order; the
        trust bundle is *bundle_path* when given, else the self-signed certificates at the
        end of *cert_path*.

        Raises:
            ConfigError: a file does not parse, the certificate is not a CA or has
                expired, the key does not match it, the chain is out of order, there is
                no root to trust, or the CA's SPIFFE ID names another trust domain.
        """
        material = load_material(cert_path, key_path, trust_domain, bundle_path=bundle_path)
        return cls(trust_domain=trust_domain, **material)

    # ------------------------------------------------------------------ properties

    @property
    def trust_domain(self) -> str:
        """The trust domain this CA issues for."""
        return self._trust_domain

    @property
    def root(self) -> x509.Certificate:
        """The root the signing certificate chains to (not necessarily the bundle's first)."""
        return self._signing_root

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The intermediates served after each leaf (empty when a root signs)."""
        return self._chain

    @property
    def bundle(self) -> TrustBundle:
        """The trust bundle in use."""
        return self._bundle

    def use_bundle(self, bundle: TrustBundle) -> None:
        """Serve *bundle* from now on; ConfigError unless it holds :attr:`root`."""
        if self._signing_root not in bundle.roots:
            raise ConfigError(
                f"trust bundle: it lacks {describe(self._signing_root)}, the root this "
                "control replica signs from: add that root (meshctl ca add-root) before "
                "starting a replica that signs from it"
            )
        self._bundle, self._bundle_pem = bundle, bundle.pem

    def is_issuer_of(self, cert: x509.Certificate) -> bool:
        """True when the current signing certificate directly issued *cert*."""
        if cert.issuer != self._cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    @property
    def signing_certificate(self) -> x509.Certificate:
        """The certificate that signs SVIDs (the root itself, or an intermediate)."""
        return self._cert

    @property
    def bundle_pem(self) -> bytes:
        """The trust bundle: one or more roots, PEM."""
        return self._bundle_pem

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of :attr:`root`'s DER."""
        return certificate_fingerprint(self.root)

    @property
    def bundle_fingerprints(self) -> tuple[str, ...]:
        """``sha256:<hex>`` of every root of the bundle: what a join token pins."""
        return self._bundle.fingerprints

    @property
    def not_after(self) -> datetime:
        """When the signing certificate expires (aware UTC)."""
        return self._cert.not_valid_after_utc

    # ------------------------------------------------------------------ issuance

    def sign_csr(self, csr_pem: bytes, *, entitled: SpiffeId, ttl: timedelta) -> IssuedCertificate:
        """Sign a workload's CSR into an X.509-SVID for *entitled*.

        Args:
            csr_pem: the PEM PKCS#10 request.
            entitled: the ID the caller has proved it may hold (token or current SVID).
            ttl: lifetime, > 0 and at most 30 days.

        Raises:
            CSRRejected: the CSR is malformed, badly signed, has the wrong key type, asks
                for an identity or names other than *entitled*'s, or *ttl* is out of range.
        """
        problem = check_ttl(ttl, MAX_SVID_TTL) or self._check_entitled(entitled)
        if problem:
            raise CSRRejected(problem)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except (ValueError, TypeError) as exc:
            raise CSRRejected(f"CSR does not parse as PEM PKCS#10: {exc}") from None
        try:
            signature_ok = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CSRRejected(f"CSR key or signature is not supported: {exc}") from None
        if not signature_ok:
            raise CSRRejected("bad signature")
        if not (
            isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, ec.SECP256R1)
        ):
            raise CSRRejected(f"key must be ECDSA P-256, got {describe_key(public_key)}")
        check_csr_names(csr, entitled)
        return self._issue(public_key, entitled, ttl)

    def issue_local(
        self,
        spiffe_id: SpiffeId,
        ttl: timedelta,
        *,
        extra_dns: tuple[str, ...] = (),
        extra_ips: tuple[str, ...] = (),
    ) -> tuple[IssuedCertificate, bytes]:
        """Issue a certificate whose key is generated here, for the control service itself.

        For the control service's serving certificate (``extra_dns=("localhost",)``,
        ``extra_ips=("127.0.0.1",)``) and the admin client certificate. The profile is the
        SVID profile plus the extra SANs.

        Returns:
            The issued certificate and its private key (PKCS#8 PEM).

        Raises:
            ConfigError: a bad ttl (> 0, at most 365 days), an ID of another trust domain
                or the trust domain itself, or an extra name that is not a DNS name / IP.
        """
        problem = check_ttl(ttl, MAX_LOCAL_TTL) or self._check_entitled(spiffe_id)
        if problem:
            raise ConfigError(problem)
        extra: list[x509.GeneralName] = []
        for name in extra_dns:
            if not name or name != name.strip() or "/" in name or ":" in name:
                raise ConfigError(f"extra_dns: {name!r} is not a DNS name")
            extra.append(x509.DNSName(name))
        for text in extra_ips:
            try:
                extra.append(x509.IPAddress(ipaddress.ip_address(text)))
            except ValueError:
                raise ConfigError(f"extra_ips: {text!r} is not an IP address") from None
        key = generate_private_key()
        issued = self._issue(key.public_key(), spiffe_id, ttl, extra)
        return issued, private_key_pem(key)

    def _check_entitled(self, spiffe_id: SpiffeId) -> str | None:
        if spiffe_id.trust_domain != self._trust_domain:
            return (
                f"{spiffe_id} is outside trust domain {self._trust_domain!r}; "
                "this CA only issues for its own"
            )
        if spiffe_id.path == "":
            return f"{spiffe_id} is the trust domain's own ID; an SVID needs a non-root path"
        return None

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        spiffe_id: SpiffeId,
        ttl: timedelta,
        extra: list[x509.GeneralName] | None = None,
    ) -> IssuedCertificate:
        now = datetime.now(UTC).replace(microsecond=0)
        not_before = now - CLOCK_SKEW
        # A leaf never outlives its issuer: peers would reject the chain anyway.
        not_after = min(now + ttl, self._cert.not_valid_after_utc)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        if spiffe_id.dns_name is not None:
            names.append(x509.DNSName(spiffe_id.dns_name))
        names.extend(extra or ())
        serial = random_serial()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # SPIFFE: with an empty subject the SAN extension must be critical.
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM) + self._chain_pem,
            serial=serial,
            spiffe_id=str(spiffe_id),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
