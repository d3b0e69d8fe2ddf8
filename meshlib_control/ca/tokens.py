"""Join tokens: one-identity, expiring, limited-use credentials for a workload's first SVID.

A token reads ``mesh1.<token_id>.<secret>.<ca_fingerprints>``. The id names the stored
record; the secret proves possession (only its SHA-256 is stored); the fingerprints
(``-``-separated hex, one per root) pin the trust bundle of the token's creation, so the
workload authenticates the control service on first contact, as kubeadm's discovery hash
does, through a root rotation: any replica signing from one of those roots is trusted.
Everything here is pure: the store persists the records.

Neither a token string nor its secret ever appears in an error message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from meshlib.errors import ConfigError, MeshError
from meshlib.identity.spiffe import SpiffeId

__all__ = [
    "MAX_TOKEN_TTL",
    "MAX_TOKEN_USES",
    "MAX_TTL",
    "TOKEN_PREFIX",
    "ParsedToken",
    "TokenError",
    "TokenRecord",
    "check_token",
    "new_token",
    "parse_token",
    "parse_ttl",
]

TOKEN_PREFIX = "mesh1"
FINGERPRINT_PREFIX = "sha256:"
_SECRET_BYTES = 32
MAX_PINNED_ROOTS = 8

_ID_RE = re.compile(r"[0-9a-f]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")
_TTL_RE = re.compile(r"(\d{1,12})([smhd])")
_TTL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_TTL = timedelta(days=3650)  # any duration flag: far beyond use, far below overflow
MAX_TOKEN_TTL = timedelta(days=365)
MAX_TOKEN_USES = 1_000_000


class TokenError(MeshError):
    """A join token was refused.

    ``code`` is one of ``malformed``, ``unknown``, ``forged``, ``expired``, ``used-up``.
    """

    def __init__(self, message: str, *, code: str, token_id: str | None = None) -> None:
        self.code = code
        self.token_id = token_id
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store keeps about a token; the secret itself is never stored.

    Attributes:
        token_id: 16 hex characters, public.
        secret_hash: SHA-256 hex of the secret's text.
        spiffe_id: the one identity the token may obtain.
        expires_at: aware UTC.
        uses_left: how many more SVIDs it may obtain.
        created_at: aware UTC.
    """

    token_id: str
    secret_hash: str
    spiffe_id: str
    expires_at: datetime
    uses_left: int
    created_at: datetime

    def after_use(self) -> TokenRecord:
        """This record with one use spent."""
        return replace(self, uses_left=self.uses_left - 1)


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A token string split into its parts; ``repr()`` hides the secret.

    ``ca_fingerprint`` is in the ``sha256:<hex>`` form of ``certificate_fingerprint``: the
    first pinned root; ``ca_fingerprints`` holds every pinned root (the bundle).
    """

    token_id: str
    secret: str = field(repr=False)
    ca_fingerprint: str
    ca_fingerprints: tuple[str, ...] = ()


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _fingerprint_hex(ca_fingerprint: str) -> str:
    hex_part = ca_fingerprint.removeprefix(FINGERPRINT_PREFIX).lower()
    if not _FINGERPRINT_RE.fullmatch(hex_part):
        raise ConfigError(
            f"ca_fingerprint: expected 'sha256:' and 64 hex digits, got {ca_fingerprint!r}"
        )
    return hex_part


def new_token(
    *,
    spiffe_id: str,
    ttl: timedelta,
    uses: int,
    ca_fingerprint: str | Sequence[str],
    now: datetime,
) -> tuple[str, TokenRecord]:
    """Create a token for *spiffe_id*, valid *ttl* from *now*, for *uses* SVIDs.

    Args:
        ca_fingerprint: the ``sha256:<hex>`` fingerprint (bare hex also accepted) of each
            root of the trust bundle to pin, or of one root.
        now: aware current time.

    Returns:
        The token string, to hand to the operator once, and the record to store.

    Raises:
        ConfigError: the message names the bad field (``ttl``, ``uses``, ``spiffe_id``,
            ``ca_fingerprint``, ``now``).
    """
    if ttl <= timedelta(0) or ttl > MAX_TOKEN_TTL:
        raise ConfigError(f"ttl: must be > 0 and at most {MAX_TOKEN_TTL.days}d, got {ttl}")
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_TOKEN_USES:
        raise ConfigError(f"uses: must be an integer 1..{MAX_TOKEN_USES}, got {uses!r}")
    try:
        parsed_id = SpiffeId.parse(spiffe_id)
    except MeshError as exc:
        raise ConfigError(f"spiffe_id: {exc}") from exc
    if parsed_id.path == "":
        raise ConfigError(f"spiffe_id: {spiffe_id} is a trust domain, not a workload identity")
    if now.tzinfo is None:
        raise ConfigError("now: must be timezone-aware")
    pins = [ca_fingerprint] if isinstance(ca_fingerprint, str) else list(ca_fingerprint)
    if not 1 <= len(pins) <= MAX_PINNED_ROOTS:
        raise ConfigError(f"ca_fingerprint: 1..{MAX_PINNED_ROOTS} roots, got {len(pins)}")
    fingerprint = "-".join(_fingerprint_hex(pin) for pin in pins)
    token_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    record = TokenRecord(
        token_id=token_id,
        secret_hash=_hash_secret(secret),
        spiffe_id=str(parsed_id),
        expires_at=now + ttl,
        uses_left=uses,
        created_at=now,
    )
    return f"{TOKEN_PREFIX}.{token_id}.{secret}.{fingerprint}", record


def _malformed(reason: str) -> TokenError:
    return TokenError(
        f"join token is malformed: {reason} "
        f"(expected {TOKEN_PREFIX}.<id>.<secret>.<ca-fingerprint>, as printed by "
        "'meshctl token create')",
        code="malformed",
    )


def parse_token(text: str) -> ParsedToken:
    """Split a token string into its parts.

    Raises:
        TokenError: ``code="malformed"``, naming the part that is wrong.
    """
    if not isinstance(text, str):
        raise _malformed(f"expected a string, got {type(text).__name__}")
    parts = text.strip().split(".")
    if len(parts) != 4:
        raise _malformed(f"{len(parts)} dot-separated parts instead of 4")
    prefix, token_id, secret, fingerprint = parts
    if prefix != TOKEN_PREFIX:
        raise _malformed(f"unknown prefix {prefix[:16]!r}")
    if not _ID_RE.fullmatch(token_id):
        raise _malformed("the id is not 16 lower-case hex digits")
    if not _SECRET_RE.fullmatch(secret):
        raise _malformed("the secret is not 43 URL-safe base64 characters")
    try:
        decoded = base64.urlsafe_b64decode(secret + "=")
    except (binascii.Error, ValueError):
        raise _malformed("the secret is not URL-safe base64") from None
    if len(decoded) != _SECRET_BYTES:
        raise _malformed("the secret is not 32 bytes")
    pins = fingerprint.lower().split("-")
    if len(pins) > MAX_PINNED_ROOTS:
        raise _malformed(f"more than {MAX_PINNED_ROOTS} CA fingerprints")
    if not all(_FINGERPRINT_RE.fullmatch(pin) for pin in pins):
        raise _malformed("a CA fingerprint is not 64 hex digits")
    pinned = tuple(FINGERPRINT_PREFIX + pin for pin in pins)
    return ParsedToken(
        token_id=token_id, secret=secret, ca_fingerprint=pinned[0], ca_fingerprints=pinned
    )


def check_token(parsed: ParsedToken, record: TokenRecord | None, now: datetime) -> None:
    """Accept *parsed* against its stored *record* at *now*, or raise.

    Spending a use is the caller's job (``record.after_use()``), done in the same store
    transaction that issues the SVID.

    Raises:
        TokenError: ``unknown`` (no record), ``forged`` (secret does not match),
            ``expired`` or ``used-up``.
    """
    token_id = parsed.token_id
    if record is None or record.token_id != token_id:
        raise TokenError(
            f"join token {token_id} is unknown (forged, or deleted)",
            code="unknown",
            token_id=token_id,
        )
    if not hmac.compare_digest(_hash_secret(parsed.secret), record.secret_hash):
        raise TokenError(
            f"join token {token_id} does not match its record (forged)",
            code="forged",
            token_id=token_id,
        )
    if now >= record.expires_at:
        raise TokenError(
            f"join token {token_id} expired at {record.expires_at.isoformat()}",
            code="expired",
            token_id=token_id,
        )
    if record.uses_left < 1:
        raise TokenError(
            f"join token {token_id} has no uses left", code="used-up", token_id=token_id
        )


def parse_ttl(text: str) -> timedelta:
    """Parse a duration such as ``30s``, ``15m``, ``1h``, ``24h`` or ``7d``.

    Raises:
        ConfigError: naming ``ttl``, for any other text, a zero duration or one longer
            than :data:`MAX_TTL` (ten years).
    """
    match = _TTL_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        shown = text if not isinstance(text, str) or len(text) <= 40 else text[:40] + "…"
        raise ConfigError(f"ttl: expected a duration like 30s, 15m, 1h or 7d, got {shown!r}")
    value = int(match.group(1))
    if value == 0:
        raise ConfigError(f"ttl: must be > 0, got {text!r}")
    ttl = timedelta(**{_TTL_UNITS[match.group(2)]: value})
    if ttl > MAX_TTL:
        raise ConfigError(f"ttl: must be at most {MAX_TTL.days}d, got {text!r}")
    return ttl
