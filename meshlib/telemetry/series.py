"""Series that exist at 0 before their first event, declared when a snapshot is installed.

A counter that appears only at its first increment makes ``rate(...)`` and ``increase(...)``
answer *nothing* instead of 0 until then. So when a snapshot is installed, every series
whose label set the snapshot already names is added 0 (which creates it, in meshlib's
local meter and in an OpenTelemetry SDK alike):

* per destination service (``mesh.destination.service``/``namespace``):
  ``mesh.client.retries``, ``mesh.client.retry_budget.exhausted``, and
  ``mesh.client.failures`` for every mesh flag (:data:`FLAGS`);
* per endpoint of a service with a circuit breaker: ``mesh.client.breaker.transitions``
  for each state it can go to (:data:`BREAKER_STATES`);
* per endpoint of a service with outlier detection: ``mesh.client.outlier.ejections``.

Endpoints come and go; in the local meter the per-endpoint series of endpoints no longer in
the snapshot are dropped (:meth:`~meshlib.telemetry.local.LocalCounter.retain`), so their
number follows the mesh rather than its history. An SDK meter keeps them (its own
cardinality limit bounds them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from meshlib.telemetry.local import LocalCounter

if TYPE_CHECKING:
    from meshlib.policy.routing import CompiledService
    from meshlib.telemetry.metrics import MeshTelemetry

__all__ = ["BREAKER_STATES", "FLAGS", "declare_services"]

FLAGS = (
    "NO_HEALTHY_UPSTREAM",
    "CIRCUIT_OPEN",
    "DEADLINE_EXCEEDED",
    "RETRY_BUDGET_EXHAUSTED",
    "POOL_OVERFLOW",
    "FAULT_INJECTED",
)
"""The ``mesh.flag`` values of ``mesh.client.failures`` (the flags of meshlib.errors)."""

BREAKER_STATES = ("open", "half-open", "closed")

DESTINATION = "mesh.destination.service"
DESTINATION_NS = "mesh.destination.namespace"
ENDPOINT = "mesh.endpoint"


def destination(service: str) -> dict[str, Any]:
    """The destination labels of a service key ``name.namespace``."""
    name, _, namespace = service.partition(".")
    return {DESTINATION: name, DESTINATION_NS: namespace}


def declare_services(telemetry: MeshTelemetry, services: Iterable[CompiledService]) -> None:
    """Create every series *services* names, at 0; forget endpoints that left."""
    endpoints: set[tuple[str, str]] = set()
    for service in services:
        labels = {DESTINATION: service.name, DESTINATION_NS: service.namespace}
        telemetry.retries.add(0, labels)
        telemetry.budget_exhausted.add(0, labels)
        for flag in FLAGS:
            telemetry.mesh_failures.add(0, {**labels, "mesh.flag": flag})
        for endpoint in service.endpoints:
            at = {**labels, ENDPOINT: endpoint.authority}
            endpoints.add((service.key, endpoint.authority))
            if service.circuit_breaker is not None:
                for state in BREAKER_STATES:
                    telemetry.breaker_transitions.add(0, {**at, "to": state})
            if service.outlier_detection is not None:
                telemetry.ejections.add(0, at)

    def keep(key: tuple[tuple[str, Any], ...]) -> bool:
        values = dict(key)
        endpoint = values.get(ENDPOINT)
        if endpoint is None:
            return True
        return (f"{values.get(DESTINATION)}.{values.get(DESTINATION_NS)}", endpoint) in endpoints

    for counter in (telemetry.breaker_transitions, telemetry.ejections):
        if isinstance(counter, LocalCounter):
            counter.retain(keep)
