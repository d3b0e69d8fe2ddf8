"""Start the Consul tasks of one control service (``--consul``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from meshlib.policy.snapshot import Endpoint
from meshlib_control.consul.client import make_client, parse_consul_url
from meshlib_control.consul.export import ConsulExporter
from meshlib_control.consul.imports import ConsulImporter
from meshlib_control.consul.status import ConsulStatus
from meshlib_control.plane.base import utc_now

if TYPE_CHECKING:
    from meshlib_control.plane import ControlPlane

__all__ = ["start_consul"]


def start_consul(
    plane: ControlPlane, *, export_interval: float | None = None
) -> list[asyncio.Task[None]]:
    """Create ``plane.consul`` (the status) and start the export and import tasks.

    The import writes ``plane.imported`` and refreshes the snapshots when an
    ExternalService's endpoints change.

    *export_interval* overrides how often the TTL checks are passed (tests).
    """
    settings = plane.settings
    assert settings.consul is not None  # only started with --consul
    address = parse_consul_url(settings.consul)
    client = make_client(address, settings.consul_token)
    status = ConsulStatus(address.url)
    plane.consul = status
    exporter = ConsulExporter(client, trust_domain=plane.trust_domain, status=status)
    kwargs = {} if export_interval is None else {"pass_every": export_interval}

    def publish(key: tuple[str, str], endpoints: tuple[Endpoint, ...] | None) -> None:
        if endpoints is None:
            changed = plane.imported.pop(key, None) is not None
        else:
            changed = plane.imported.get(key) != endpoints
            plane.imported[key] = endpoints
        if changed:
            plane.refresh()

    importer = ConsulImporter(client, status=status, publish=publish)
    return [
        asyncio.create_task(exporter.run(lambda: plane.store.live_instances(utc_now()), **kwargs)),
        asyncio.create_task(importer.run(plane.store.resources)),
    ]
