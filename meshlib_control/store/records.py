"""The registry's records: instances and issued certificates, as the store keeps them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["CertificateRecord", "InstanceRecord", "from_timestamp", "timestamp"]


def timestamp(value: datetime) -> str:
    """*value* as the ISO 8601 UTC text the store keeps."""
    return value.astimezone(UTC).isoformat()


def from_timestamp(value: str) -> datetime:
    """A stored ISO 8601 timestamp as a datetime."""
    return datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One registered instance of a service."""

    id: str
    spiffe_id: str
    service: str
    namespace: str
    address: str
    port: int
    plaintext_port: int | None
    admin_port: int | None
    labels: tuple[tuple[str, str], ...]
    mode: str
    registered_at: datetime
    last_seen: datetime
    expires_at: datetime
    applied_version: str | None = None
    rejected_version: str | None = None
    rejection: str | None = None
    source: str | None = None  # the IP address the registration came from

    def endpoint_key(self) -> tuple[Any, ...]:
        """What a snapshot shows of this instance; heartbeats that keep it equal change nothing."""
        return (self.id, self.spiffe_id, self.address, self.port, self.labels, self.mode)

    def to_json(self) -> dict[str, Any]:
        """The admin API's form."""
        return {
            "id": self.id,
            "spiffeId": self.spiffe_id,
            "service": self.service,
            "namespace": self.namespace,
            "address": self.address,
            "port": self.port,
            "plaintextPort": self.plaintext_port,
            "adminPort": self.admin_port,
            "labels": dict(self.labels),
            "mode": self.mode,
            "registeredAt": timestamp(self.registered_at),
            "lastSeen": timestamp(self.last_seen),
            "expiresAt": timestamp(self.expires_at),
            "appliedVersion": self.applied_version,
            "rejectedVersion": self.rejected_version,
            "rejection": self.rejection,
            "registeredFrom": self.source,
        }


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """An issued certificate: never its key, which the control service never sees."""

    serial: str
    spiffe_id: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
