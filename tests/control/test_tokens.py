"""Join tokens: format, records without secrets, each refusal code, and TTL parsing."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meshlib.errors import ConfigError
from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.ca.tokens import (
    ParsedToken,
    TokenError,
    TokenRecord,
    check_token,
    new_token,
    parse_token,
    parse_ttl,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
FINGERPRINT = "sha256:" + "ab" * 32


def _token(**overrides: object) -> tuple[str, TokenRecord]:
    args: dict[str, object] = {
        "spiffe_id": ORDERS,
        "ttl": timedelta(hours=1),
        "uses": 1,
        "ca_fingerprint": FINGERPRINT,
        "now": NOW,
    }
    args.update(overrides)
    return new_token(**args)  # type: ignore[arg-type]


def test_token_format() -> None:
    """A token reads mesh1.<16 hex id>.<43-char urlsafe secret>.<64 hex fingerprint>."""
    token, record = _token()
    assert re.fullmatch(r"mesh1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}\.(ab){32}", token)
    assert token.split(".")[1] == record.token_id


def test_record_never_holds_the_secret() -> None:
    """The record keeps the secret's SHA-256, never the secret itself."""
    token, record = _token(uses=3, ttl=timedelta(minutes=15))
    secret = token.split(".")[2]
    assert record.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(record)
    assert all(secret not in str(getattr(record, f)) for f in record.__slots__)
    assert record.spiffe_id == ORDERS
    assert record.uses_left == 3
    assert record.created_at == NOW
    assert record.expires_at == NOW + timedelta(minutes=15)


def test_tokens_are_unique() -> None:
    """Every token has a fresh id and secret."""
    tokens = {_token()[0] for _ in range(20)}
    assert len({t.split(".")[1] for t in tokens}) == 20
    assert len({t.split(".")[2] for t in tokens}) == 20


def test_valid_token_is_accepted_until_used_up() -> None:
    """A fresh token passes check_token; after its uses are spent it is used-up."""
    token, record = _token(uses=2)
    parsed = parse_token(token)
    check_token(parsed, record, NOW)
    record = record.after_use()
    check_token(parsed, record, NOW + timedelta(minutes=59))
    record = record.after_use()
    with pytest.raises(TokenError, match="has no uses left") as info:
        check_token(parsed, record, NOW)
    assert info.value.code == "used-up"


def test_parsed_token_carries_pinned_fingerprint(tmp_path: Path) -> None:
    """The token carries the CA's fingerprint, which parse_token returns as sha256:<hex>."""
    ca = CertificateAuthority.load_or_create(tmp_path, "mesh.local")
    token, _ = _token(ca_fingerprint=ca.fingerprint)
    assert token.endswith("." + ca.fingerprint.removeprefix("sha256:"))
    assert parse_token(token).ca_fingerprint == ca.fingerprint


def test_parsed_token_repr_hides_secret() -> None:
    """repr(ParsedToken) does not show the secret."""
    token, _ = _token()
    parsed = parse_token(token)
    assert parsed.secret not in repr(parsed)
    assert parsed.token_id in repr(parsed)


def test_unknown_token() -> None:
    """A token with no stored record is refused as unknown."""
    token, _ = _token()
    parsed = parse_token(token)
    with pytest.raises(TokenError, match=f"join token {parsed.token_id} is unknown") as info:
        check_token(parsed, None, NOW)
    assert info.value.code == "unknown"
    assert info.value.token_id == parsed.token_id


def test_forged_secret() -> None:
    """A token whose secret does not match the record's hash is refused as forged."""
    token, record = _token()
    other_token, _ = _token()
    prefix, token_id, _, fp = token.split(".")
    forged = parse_token(".".join([prefix, token_id, other_token.split(".")[2], fp]))
    with pytest.raises(TokenError, match="does not match its record") as info:
        check_token(forged, record, NOW)
    assert info.value.code == "forged"
    assert forged.secret not in str(info.value)


def test_expired_token() -> None:
    """A token checked at or after its expiry is refused as expired, naming the time."""
    token, record = _token(ttl=timedelta(hours=1))
    with pytest.raises(TokenError, match="expired at 2026-01-01T13:00:00") as info:
        check_token(parse_token(token), record, NOW + timedelta(hours=1))
    assert info.value.code == "expired"


def test_forged_is_checked_before_expiry() -> None:
    """A wrong secret is reported as forged even when the token has also expired."""
    token, record = _token()
    other, _ = _token()
    parts = token.split(".")
    parts[2] = other.split(".")[2]
    with pytest.raises(TokenError) as info:
        check_token(parse_token(".".join(parts)), record, NOW + timedelta(days=1))
    assert info.value.code == "forged"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t.replace("mesh1.", "mesh2.", 1), "unknown prefix"),
        (lambda t: t.rsplit(".", 1)[0], "3 dot-separated parts"),
        (lambda t: t + ".x", "5 dot-separated parts"),
        (lambda t: "", "1 dot-separated parts"),
        (lambda t: t.replace(t.split(".")[1], "XYZ", 1), "id is not 16"),
        (lambda t: t.replace(t.split(".")[2], "short", 1), "secret is not 43"),
        (lambda t: t.replace(t.split(".")[2], "!" * 43, 1), "secret is not 43"),
        (lambda t: t[:-2], "fingerprint is not 64"),
    ],
)
def test_malformed_tokens(mutate: object, reason: str) -> None:
    """Malformed token strings are refused with code malformed, naming the bad part."""
    token, _ = _token()
    assert callable(mutate)
    bad = mutate(token)
    with pytest.raises(TokenError, match=reason) as info:
        parse_token(bad)
    assert info.value.code == "malformed"
    assert token.split(".")[2] not in str(info.value)


def test_parse_token_tolerates_surrounding_whitespace() -> None:
    """A token pasted with a trailing newline still parses."""
    token, _ = _token()
    assert parse_token(f"  {token}\n") == parse_token(token)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"ttl": timedelta(0)}, "ttl"),
        ({"ttl": timedelta(seconds=-1)}, "ttl"),
        ({"uses": 0}, "uses"),
        ({"uses": -3}, "uses"),
        ({"uses": True}, "uses"),
        ({"spiffe_id": "https://x"}, "spiffe_id"),
        ({"spiffe_id": "spiffe://mesh.local"}, "spiffe_id"),
        ({"ca_fingerprint": "sha256:1234"}, "ca_fingerprint"),
        ({"now": datetime(2026, 1, 1)}, "now"),
    ],
)
def test_new_token_validates_fields(overrides: dict[str, object], field: str) -> None:
    """new_token refuses bad arguments with a ConfigError naming the field."""
    with pytest.raises(ConfigError, match=f"^{field}:"):
        _token(**overrides)


def test_bare_hex_fingerprint_is_accepted() -> None:
    """new_token accepts the fingerprint with or without its sha256: prefix."""
    token, _ = _token(ca_fingerprint="AB" * 32)
    assert parse_token(token).ca_fingerprint == FINGERPRINT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        (" 2h ", timedelta(hours=2)),
    ],
)
def test_parse_ttl(text: str, expected: timedelta) -> None:
    """parse_ttl reads seconds, minutes, hours and days."""
    assert parse_ttl(text) == expected


@pytest.mark.parametrize("text", ["", "1w", "h", "1.5h", "-1h", "0s", "1h30m", "10"])
def test_parse_ttl_refuses_other_text(text: str) -> None:
    """parse_ttl refuses anything else with a ConfigError naming ttl."""
    with pytest.raises(ConfigError, match=r"^ttl:"):
        parse_ttl(text)


def test_parsed_token_is_a_value() -> None:
    """ParsedToken is an immutable value comparable by its fields."""
    a = ParsedToken(token_id="0" * 16, secret="s", ca_fingerprint=FINGERPRINT)
    assert a == ParsedToken(token_id="0" * 16, secret="s", ca_fingerprint=FINGERPRINT)
    with pytest.raises(AttributeError):
        a.token_id = "x"  # type: ignore[misc]
