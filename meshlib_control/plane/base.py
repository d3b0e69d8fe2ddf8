"""What the control plane's operations share: its parts, the mesh state and the clock."""

from __future__ import annotations

from datetime import UTC, datetime

from meshlib.policy.snapshot import Endpoint
from meshlib_control.ca.authority import CertificateAuthority
from meshlib_control.jwks import JwksCache
from meshlib_control.settings import Settings
from meshlib_control.snapshot.builder import MeshState
from meshlib_control.snapshot.cache import SnapshotCache
from meshlib_control.store.base import Store
from meshlib_control.store.records import CertificateRecord

__all__ = ["PlaneBase", "utc_now"]


def utc_now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


class PlaneBase:
    """The parts of one control service that its workload and admin operations use.

    :class:`~meshlib_control.plane.ControlPlane` sets them in its constructor.
    """

    settings: Settings
    store: Store
    ca: CertificateAuthority
    cache: SnapshotCache
    trust_domain: str
    jwks: JwksCache
    # ExternalServices' endpoints from Consul, by (namespace, name): written by
    # meshlib_control.consul.imports (which then calls refresh), empty without --consul.
    imported: dict[tuple[str, str], tuple[Endpoint, ...]]

    def state(self) -> MeshState:
        """The current resources and live instances (and the key sets of their jwksUris)."""
        resources = self.store.resources()
        self.jwks.notice(resources)
        return MeshState(
            trust_domain=self.trust_domain,
            resources=resources,
            instances=self.store.live_instances(utc_now()),
            trust_bundle=self.ca.bundle_pem.decode(),
            jwks=self.jwks.key_sets(),
            external=tuple(sorted(self.imported.items())),
        )

    def refresh(self) -> int:
        """Rebuild snapshots from the store; returns how many watches were woken."""
        return self.cache.set_state(self.state())

    def _record(
        self, serial: int, spiffe_id: str, not_before: datetime, not_after: datetime
    ) -> None:
        self.store.record_certificate(
            CertificateRecord(f"{serial:x}", spiffe_id, not_before, not_after, utc_now())
        )
