"""An in-memory CA minting X.509-SVIDs for test identities (never for production)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlib.identity.svid import SVID

__all__ = ["TestCA"]

LIFETIME = dt.timedelta(hours=1)

_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip


def _usage(*granted: str) -> dict[str, bool]:
    return {name: name in granted for name in _USAGES}


class TestCA:
    """A throwaway root that signs SVIDs following DESIGN.md invariant 2 (P-256, one URI SAN)."""

    __test__ = False  # not a pytest test class

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"meshlib test CA {trust_domain}")]
        )
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(**_usage("key_cert_sign", "crl_sign")), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), False)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def spiffe_id(self, service: str, namespace: str) -> str:
        """The SPIFFE ID of *service* in *namespace*."""
        return f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service}"

    def mint(self, service: str, namespace: str) -> SVID:
        """A fresh key and SVID for *service*, valid for an hour."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans = [
            x509.UniformResourceIdentifier(self.spiffe_id(service, namespace)),
            x509.DNSName(f"{service}.{namespace}.svc.{self.trust_domain}"),
        ]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + LIFETIME)
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(**_usage("digital_signature", "key_agreement")), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return SVID.from_pem(
            cert.public_bytes(serialization.Encoding.PEM), key_pem, self.bundle_pem
        )
