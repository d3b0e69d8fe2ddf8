"""Re-bootstrap credentials: a one-use way back into the mesh after an SVID expired.

Renewal normally authenticates with the current SVID over mTLS. An SVID that expired while
the control service was down can no longer do that, and the join token that first admitted
the workload is usually spent or expired by then. So every successful sign also issues a
**re-bootstrap credential** for the identity it signed for: a random secret the workload
keeps 0600 beside its key. Presented (over server-authenticated TLS, with a fresh CSR)
instead of the expired SVID, it buys exactly one new SVID for that same identity, and the
answer carries the next credential.

A credential reads ``mrb1.<credential_id>.<secret>``. Only the SHA-256 of the secret is
stored; the record names the SPIFFE ID it is bound to, the instance it was issued to (a
new sign for the same identity and instance replaces the previous credential), its expiry
and, once used, when it was spent. Everything here is pure: the store persists the records.

Neither a credential string nor its secret ever appears in an error message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from meshlib.errors import ConfigError, MeshError

__all__ = [
    "CREDENTIAL_PREFIX",
    "DEFAULT_REBOOTSTRAP_TTL",
    "ParsedCredential",
    "RebootstrapError",
    "RebootstrapRecord",
    "check_credential",
    "new_credential",
    "parse_credential",
    "requested_spiffe_id",
]

CREDENTIAL_PREFIX = "mrb1"
DEFAULT_REBOOTSTRAP_TTL = timedelta(days=7)
_SECRET_BYTES = 32

_ID_RE = re.compile(r"[0-9a-f]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")


class RebootstrapError(MeshError):
    """A re-bootstrap credential was refused.

    ``code`` is one of ``malformed``, ``unknown``, ``forged``, ``expired``, ``spent``,
    ``foreign`` (bound to another identity than the one asked for).
    """

    def __init__(self, message: str, *, code: str, credential_id: str | None = None) -> None:
        self.code = code
        self.credential_id = credential_id
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class RebootstrapRecord:
    """What the store keeps about a credential; the secret itself is never stored.

    Attributes:
        credential_id: 16 hex characters, public.
        secret_hash: SHA-256 hex of the secret's text.
        spiffe_id: the one identity the credential may obtain an SVID for.
        instance_id: the instance it was issued to ("" when the caller named none).
        expires_at: aware UTC.
        created_at: aware UTC.
        spent_at: aware UTC once used, else None.
    """

    credential_id: str
    secret_hash: str
    spiffe_id: str
    instance_id: str
    expires_at: datetime
    created_at: datetime
    spent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ParsedCredential:
    """A credential string split into its parts; ``repr()`` hides the secret."""

    credential_id: str
    secret: str = field(repr=False)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_credential(
    *, spiffe_id: str, instance_id: str, ttl: timedelta, now: datetime
) -> tuple[str, RebootstrapRecord]:
    """Create a credential for *spiffe_id*, valid *ttl* from *now*.

    Returns:
        The credential string, to return to the workload once, and the record to store.

    Raises:
        ConfigError: ``ttl`` not > 0, or ``now`` naive.
    """
    if ttl <= timedelta(0):
        raise ConfigError(f"rebootstrap ttl: must be > 0, got {ttl}")
    if now.tzinfo is None:
        raise ConfigError("now: must be timezone-aware")
    credential_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    record = RebootstrapRecord(
        credential_id=credential_id,
        secret_hash=_hash_secret(secret),
        spiffe_id=spiffe_id,
        instance_id=instance_id,
        expires_at=now + ttl,
        created_at=now,
    )
    return f"{CREDENTIAL_PREFIX}.{credential_id}.{secret}", record


def _malformed(reason: str) -> RebootstrapError:
    return RebootstrapError(
        f"re-bootstrap credential is malformed: {reason} "
        f"(expected {CREDENTIAL_PREFIX}.<id>.<secret>, as returned by /v1/sign)",
        code="malformed",
    )


def parse_credential(text: object) -> ParsedCredential:
    """Split a credential string into its parts.

    Raises:
        RebootstrapError: ``code="malformed"``, naming the part that is wrong.
    """
    if not isinstance(text, str):
        raise _malformed(f"expected a string, got {type(text).__name__}")
    parts = text.strip().split(".")
    if len(parts) != 3:
        raise _malformed(f"{len(parts)} dot-separated parts instead of 3")
    prefix, credential_id, secret = parts
    if prefix != CREDENTIAL_PREFIX:
        raise _malformed(f"unknown prefix {prefix[:16]!r}")
    if not _ID_RE.fullmatch(credential_id):
        raise _malformed("the id is not 16 lower-case hex digits")
    if not _SECRET_RE.fullmatch(secret):
        raise _malformed("the secret is not 43 URL-safe base64 characters")
    try:
        decoded = base64.urlsafe_b64decode(secret + "=")
    except (binascii.Error, ValueError):
        raise _malformed("the secret is not URL-safe base64") from None
    if len(decoded) != _SECRET_BYTES:
        raise _malformed("the secret is not 32 bytes")
    return ParsedCredential(credential_id=credential_id, secret=secret)


def check_credential(
    parsed: ParsedCredential, record: RebootstrapRecord | None, *, wanted: str, now: datetime
) -> None:
    """Accept *parsed* against its stored *record* for identity *wanted* at *now*, or raise.

    Spending it is the caller's job, done atomically with storing the next credential.

    Raises:
        RebootstrapError: ``unknown`` (no record: never issued, replaced or revoked),
            ``forged``, ``foreign`` (bound to another identity), ``spent`` or ``expired``.
    """
    cid = parsed.credential_id
    if record is None or record.credential_id != cid:
        raise RebootstrapError(
            f"re-bootstrap credential {cid} is unknown (never issued, replaced by a newer "
            "one, or revoked)",
            code="unknown",
            credential_id=cid,
        )
    if not hmac.compare_digest(_hash_secret(parsed.secret), record.secret_hash):
        raise RebootstrapError(
            f"re-bootstrap credential {cid} does not match its record (forged)",
            code="forged",
            credential_id=cid,
        )
    if record.spiffe_id != wanted:
        raise RebootstrapError(
            f"re-bootstrap credential {cid} belongs to {record.spiffe_id}, not {wanted}",
            code="foreign",
            credential_id=cid,
        )
    if record.spent_at is not None:
        raise RebootstrapError(
            f"re-bootstrap credential {cid} was already used at {record.spent_at.isoformat()}",
            code="spent",
            credential_id=cid,
        )
    if now >= record.expires_at:
        raise RebootstrapError(
            f"re-bootstrap credential {cid} expired at {record.expires_at.isoformat()}",
            code="expired",
            credential_id=cid,
        )


def requested_spiffe_id(csr_pem: bytes) -> str | None:
    """The one URI SAN a CSR asks for, or None when it does not parse or has not exactly one.

    Only to word the refusal of a credential presented for another identity; the CA checks
    the CSR in full when it signs.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, x509.DuplicateExtension):
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else None
