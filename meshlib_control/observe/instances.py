"""What the observer keeps of each instance, and what it reads of the control plane.

:class:`PlaneView` is the observer's whole view of the control plane: the observer depends
on this protocol, and :class:`~meshlib_control.plane.ControlPlane` satisfies it, so the
plane can own an observer without the observer importing the plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from meshlib_control.observe.golden import InstanceWindow
from meshlib_control.observe.prom import MetricsScrape
from meshlib_control.snapshot.builder import MeshState, build_snapshot
from meshlib_control.snapshot.cache import SnapshotCache
from meshlib_control.store.sqlite import InstanceRecord

__all__ = ["CERT_EXPIRY", "InstanceState", "PlaneView", "expected_versions"]


class PlaneView(Protocol):
    """The control plane as the observer reads it."""

    @property
    def cache(self) -> SnapshotCache:
        """The snapshot cache: its state is what the watches were last answered from."""
        ...

    def state(self) -> MeshState:
        """The current resources and live instances, read from the store."""
        ...


MAX_EXPIRY_SECONDS = 100 * 365 * 86400.0


CERT_EXPIRY = "mesh_certificate_expiry_seconds"


def expected_versions(
    plane: PlaneView, record: InstanceRecord, reported: dict[str, Any] | None
) -> set[str]:
    """Versions of the snapshot the control would send *record* now.

    Built (purely, without touching the watch cache) with ``dependencies=None`` and, when
    the instance's own snapshot is known, with the services that snapshot lists.
    """
    state = plane.cache.state
    versions = {build_snapshot(state, service=record.service, namespace=record.namespace).version}
    if reported is not None:
        services = reported.get("services")
        if isinstance(services, list):
            deps = tuple(
                sorted(
                    f"{s.get('name')}.{s.get('namespace')}" for s in services if isinstance(s, dict)
                )
            )
            versions.add(
                build_snapshot(
                    state, service=record.service, namespace=record.namespace, dependencies=deps
                ).version
            )
    return versions


@dataclass(slots=True)
class InstanceState:
    """What the scraper knows of one instance."""

    record: InstanceRecord
    latest: MetricsScrape | None = None
    latest_at: float | None = None
    previous: MetricsScrape | None = None
    previous_at: float | None = None
    snapshot: dict[str, Any] | None = None  # last /debug/snapshot answer
    snapshot_at: float | None = None
    error: str | None = None
    stale_version: str | None = None  # applied version last seen not matching the control
    stale_since: float | None = None

    def window(self) -> InstanceWindow | None:
        """The instance's last two scrapes, or None before the first."""
        if self.latest is None or self.latest_at is None:
            return None
        return InstanceWindow(
            instance_id=self.record.id,
            service=self.record.service,
            namespace=self.record.namespace,
            latest=self.latest,
            latest_at=self.latest_at,
            previous=self.previous,
            previous_at=self.previous_at,
        )

    def certificate_expiry(self, now: float) -> float | None:
        """Seconds until the instance's SVID expires, from the last scrape's gauge."""
        if self.latest is None or self.latest_at is None:
            return None
        gauge = self.latest.gauge(CERT_EXPIRY)
        if gauge is None or abs(gauge.value) > MAX_EXPIRY_SECONDS:
            return None  # no gauge, or one no certificate could have
        return gauge.value - (now - self.latest_at)
