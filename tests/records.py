"""Registry records for the pure tests of snapshots and their Envoy translation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meshlib_control.store.sqlite import InstanceRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TD = "mesh.local"


def instance_record(
    iid: str,
    service: str,
    *,
    address: str = "127.0.0.1",
    port: int = 8443,
    ns: str = "default",
    mode: str = "library",
    labels: dict[str, str] | None = None,
) -> InstanceRecord:
    """A live registration of *service* (SPIFFE ID in trust domain :data:`TD`) at :data:`NOW`."""
    return InstanceRecord(
        id=iid,
        spiffe_id=f"spiffe://{TD}/ns/{ns}/sa/{service}",
        service=service,
        namespace=ns,
        address=address,
        port=port,
        plaintext_port=None,
        admin_port=None,
        labels=tuple(sorted((labels or {}).items())),
        mode=mode,
        registered_at=NOW,
        last_seen=NOW,
        expires_at=NOW + timedelta(seconds=15),
    )
