"""Start the Consul tasks of one control service (``--consul``)."""

from __future__ import annotations

import asyncio
from typing import Any

from meshlib_control.consul.client import make_client, parse_consul_url
from meshlib_control.consul.export import ConsulExporter
from meshlib_control.consul.status import ConsulStatus
from meshlib_control.plane.base import utc_now

__all__ = ["start_consul"]


def start_consul(plane: Any, *, export_interval: float | None = None) -> list[asyncio.Task[None]]:
    """Create ``plane.consul`` (the status) and start the export and import tasks.

    *export_interval* overrides how often the TTL checks are passed (tests).
    """
    settings = plane.settings
    address = parse_consul_url(settings.consul)
    client = make_client(address, settings.consul_token)
    status = ConsulStatus(address.url)
    plane.consul = status
    exporter = ConsulExporter(client, trust_domain=plane.trust_domain, status=status)
    kwargs = {} if export_interval is None else {"pass_every": export_interval}
    return [
        asyncio.create_task(exporter.run(lambda: plane.store.live_instances(utc_now()), **kwargs))
    ]
