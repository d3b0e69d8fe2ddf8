"""Rejoining after SVID expiry: the pure parts (credential form, backoff, the refusal message)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from meshlib.errors import ControlPlaneError
from meshlib.identity.keys import generate_private_key, private_key_pem
from meshlib.identity.svid import SVID
from meshlib.runtime.cache import WorkloadCache
from meshlib.runtime.renewal import (
    REFUSED_RETRY_MAX,
    RETRY_MAX,
    RebootstrapCredential,
    is_unusable,
    rejoin,
    renewal_backoff,
)

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


def _svid(not_after: datetime) -> SVID:
    """A self-signed stand-in SVID for *ORDERS* ending at *not_after*."""
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(not_after - timedelta(hours=1))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ORDERS)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(Encoding.PEM)
    return SVID.from_pem(pem, private_key_pem(key), pem)


def _credential() -> RebootstrapCredential:
    return RebootstrapCredential(
        credential="mrb1.0123456789abcdef." + "s" * 43,
        credential_id="0123456789abcdef",
        spiffe_id=ORDERS,
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    )


def test_credential_round_trips_through_the_cache_0600_and_repr_hides_the_secret(tmp_path):
    """The credential is kept 0600 beside the key and never shown by repr()."""
    cache = WorkloadCache(tmp_path)
    cache.save_rebootstrap(_credential())
    assert cache.load_rebootstrap() == _credential()
    assert (tmp_path / "rebootstrap.json").stat().st_mode & 0o777 == 0o600
    assert "s" * 43 not in repr(_credential())


def test_unreadable_or_missing_credential_is_none(tmp_path):
    """A missing or garbled credential file reads as no credential."""
    cache = WorkloadCache(tmp_path)
    assert cache.load_rebootstrap() is None
    (tmp_path / "rebootstrap.json").write_text("{not json")
    assert cache.load_rebootstrap() is None
    (tmp_path / "rebootstrap.json").write_text('{"id": "x"}')
    assert cache.load_rebootstrap() is None


def test_an_svid_is_unusable_from_just_before_its_expiry():
    """An SVID about to expire is not presented for an mTLS renewal."""
    now = datetime.now(UTC)
    assert is_unusable(_svid(now - timedelta(seconds=1)), now)
    assert is_unusable(_svid(now + timedelta(seconds=1)), now)
    assert not is_unusable(_svid(now + timedelta(minutes=1)), now)


def test_renewal_backoff_is_jittered_and_capped():
    """Retries back off exponentially with jitter, capped lower when control is unreachable."""
    delays = [renewal_backoff(n) for n in range(1, 40)]
    assert all(0 < d <= RETRY_MAX for d in delays)
    assert max(delays) > RETRY_MAX / 2
    assert len({round(d, 6) for d in delays}) > 1
    refused = [renewal_backoff(n, refused=True) for n in range(1, 40)]
    assert all(0 < d <= REFUSED_RETRY_MAX for d in refused)
    assert max(refused) > RETRY_MAX


def test_nothing_left_to_rejoin_with_says_so(tmp_path: Path):
    """No credential and no token: the error names the expiry and both missing ways in."""
    svid = _svid(datetime.now(UTC) - timedelta(seconds=5))
    with pytest.raises(ControlPlaneError) as refused:
        asyncio.run(
            rejoin(
                url="https://127.0.0.1:1",
                svid=svid,
                credential=None,
                csr_pem=b"",
                instance_id="i1",
                files_dir=tmp_path,
                now=datetime.now(UTC),
                with_token=None,
            )
        )
    message = str(refused.value)
    assert refused.value.status == 401
    assert message.startswith(f"SVID expired at {svid.not_after.isoformat()}, and ")
    assert "there is no re-bootstrap credential" in message
    assert "no join token is configured (MESH_TOKEN)" in message
    assert "meshctl token create --service orders --namespace default" in message


def test_unreachable_control_is_reported_as_such_after_the_expiry(tmp_path: Path):
    """With control down, the error says the SVID expired and the credential could not be used."""
    svid = _svid(datetime.now(UTC) - timedelta(seconds=5))
    with pytest.raises(ControlPlaneError) as down:
        asyncio.run(
            rejoin(
                url="https://127.0.0.1:1",
                svid=svid,
                credential=_credential(),
                csr_pem=b"",
                instance_id="i1",
                files_dir=tmp_path,
                now=datetime.now(UTC),
                with_token=None,
            )
        )
    assert down.value.status is None  # retryable
    assert str(down.value).startswith(
        f"SVID expired at {svid.not_after.isoformat()}; renewing with the re-bootstrap "
        "credential: control service unreachable"
    )
