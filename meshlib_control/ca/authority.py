"""The mesh certificate authority: a root it creates itself, or a CA plugged in from files.

It signs CSRs into X.509-SVIDs that follow the SPIFFE profile exactly (DESIGN.md,
invariant 2) and refuses every CSR that would produce anything else. It copies nothing
from a CSR but its public key: the identity comes from what the caller is *entitled* to,
and every extension is the CA's own.
"""

from __future__ import annotations

import ipaddress
import itertools
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlib.errors import ConfigError, MeshError
from meshlib.identity.keys import (
    generate_private_key,
    private_key_pem,
    write_private_file,
    write_public_file,
)
from meshlib.identity.spiffe import SpiffeId, trust_domain_id
from meshlib.identity.svid import (
    certificate_fingerprint,
    load_pem_certificates,
    spiffe_id_from_certificate,
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

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
ROOT_VALIDITY = timedelta(days=3650)
MAX_SVID_TTL = timedelta(days=30)
# The control service's own and the admin certificate: keys generated here, never sent.
MAX_LOCAL_TTL = timedelta(days=365)
# notBefore is back-dated so that a peer whose clock is a little behind accepts the cert.
CLOCK_SKEW = timedelta(seconds=60)


class CSRRejected(MeshError):
    """The CA refused to sign a CSR; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"CSR rejected: {reason}")


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


def _describe_key(key: CertificatePublicKeyTypes) -> str:
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


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _random_serial() -> int:
    while True:
        serial = secrets.randbits(128)
        if serial:  # RFC 5280: positive
            return serial


def _check_ttl(ttl: timedelta, maximum: timedelta) -> str | None:
    if ttl <= timedelta(0):
        return f"ttl must be > 0, got {ttl}"
    if ttl > maximum:
        return f"ttl must be at most {maximum.days} days, got {ttl}"
    return None


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
        self._roots = roots
        self._chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        self._bundle_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots)
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
        td_uri = _trust_domain_uri(trust_domain)
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
            return cls.from_files(cert_path, key_path, trust_domain)

        key = generate_private_key()
        now = datetime.now(UTC)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"meshlib root CA {trust_domain}")]
        )
        root = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ROOT_VALIDITY)
            # path_length=1: the root may later sign one intermediate layer (e.g. per
            # replica), but never a chain of them.
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(td_uri)]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        # Key first: a crash in between leaves only ca.key, which the next start refuses
        # with a clear message rather than silently minting a second root.
        write_private_file(key_path, private_key_pem(key))
        write_public_file(cert_path, root.public_bytes(serialization.Encoding.PEM))
        return cls(
            trust_domain=trust_domain, signing_cert=root, signing_key=key, chain=(), roots=(root,)
        )

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
        td_uri = _trust_domain_uri(trust_domain)
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
        _check_is_ca(signing, cert_path)
        if _public_der(key.public_key()) != _public_der(signing.public_key()):
            raise ConfigError(
                f"CA key {key_path} does not match the certificate in {cert_path} "
                "(different public keys)"
            )
        now = datetime.now(UTC)
        if signing.not_valid_after_utc <= now:
            raise ConfigError(
                f"CA certificate {cert_path} expired at {signing.not_valid_after_utc.isoformat()}"
            )
        _check_trust_domain(signing, td_uri, cert_path)
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
        return cls(
            trust_domain=trust_domain,
            signing_cert=signing,
            signing_key=key,
            chain=chain,
            roots=roots,
        )

    # ------------------------------------------------------------------ properties

    @property
    def trust_domain(self) -> str:
        """The trust domain this CA issues for."""
        return self._trust_domain

    @property
    def root(self) -> x509.Certificate:
        """The (first) root of the trust bundle; the one join tokens pin."""
        return self._roots[0]

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
        problem = _check_ttl(ttl, MAX_SVID_TTL) or self._check_entitled(entitled)
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
            raise CSRRejected(f"key must be ECDSA P-256, got {_describe_key(public_key)}")
        _check_csr_names(csr, entitled)
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
        problem = _check_ttl(ttl, MAX_LOCAL_TTL) or self._check_entitled(spiffe_id)
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
        serial = _random_serial()
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


def _trust_domain_uri(trust_domain: str) -> str:
    try:
        return trust_domain_id(trust_domain)
    except MeshError as exc:
        raise ConfigError(f"trust_domain: {exc}") from exc


def _check_is_ca(cert: x509.Certificate, path: Path) -> None:
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


def _check_trust_domain(cert: x509.Certificate, td_uri: str, path: Path) -> None:
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


def _check_csr_names(csr: x509.CertificateSigningRequest, entitled: SpiffeId) -> None:
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
