"""Import: ExternalServices' endpoints from Consul's health API, by blocking queries.

One watcher per ExternalService asks ``/v1/health/service/<name>?passing&tag=…`` with the
``X-Consul-Index`` of its previous answer and ``wait`` :data:`BLOCKING_WAIT`, so Consul
answers only when the list changed (or the wait ended): no polling on the request path, and
none here either. A failed or malformed answer is reported (``meshctl check``, the metric)
and retried with exponential backoff up to :data:`MAX_BACKOFF`; meanwhile the last known
endpoints stay in every snapshot (a Consul outage does not empty the destination). An index
that goes backwards (Consul restarted, or a different server) restarts from 0, as Consul's
documentation asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meshlib.policy.externalmodel import ExternalServiceSpec
from meshlib.policy.model import Resource
from meshlib.policy.snapshot import EXTERNAL_MODE, Endpoint
from meshlib_control.consul.status import ConsulStatus
from meshlib_control.consul.threads import in_daemon_thread

__all__ = ["BLOCKING_WAIT", "ConsulImporter", "endpoints_from_health"]

log = logging.getLogger("meshlib_control.consul")

BLOCKING_WAIT = "30s"
RESCAN = 1.0  # how often the ExternalService resources are looked at (local, cheap)
MAX_BACKOFF = 30.0
MAX_ENDPOINTS = 1024  # of one ExternalService; more is refused as malformed

Key = tuple[str, str]  # (namespace, name) of the ExternalService


def _label(tag: str) -> tuple[str, str]:
    name, sep, value = tag.partition("=")
    return (name, value) if sep else (tag, "")


def endpoints_from_health(entries: Any, service: str) -> tuple[Endpoint, ...]:
    """The endpoints of a ``/v1/health/service`` answer (already ``?passing``).

    The address is the service's, else its node's; tags become labels (``k=v`` → k: v, a
    bare tag → tag: ""). Raises ValueError naming what is malformed.
    """
    if not isinstance(entries, list):
        raise ValueError(f"health/service/{service}: not a JSON list")
    if len(entries) > MAX_ENDPOINTS:
        raise ValueError(f"health/service/{service}: more than {MAX_ENDPOINTS} instances")
    out = {}
    for i, entry in enumerate(entries):
        where = f"health/service/{service}[{i}]"
        svc = entry.get("Service") if isinstance(entry, Mapping) else None
        node = entry.get("Node") if isinstance(entry, Mapping) else None
        if not isinstance(svc, Mapping) or not isinstance(node, Mapping):
            raise ValueError(f"{where}: no Service or Node object")
        address = svc.get("Address") or node.get("Address")
        port = svc.get("Port")
        sid = svc.get("ID")
        tags = svc.get("Tags") or []
        if not isinstance(address, str) or not address:
            raise ValueError(f"{where}: no address")
        with contextlib.suppress(ValueError):
            address = str(ipaddress.ip_address(address))  # canonical form when an IP
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"{where}.Service.Port: not a port: {port!r}")
        if not isinstance(sid, str) or not sid:
            raise ValueError(f"{where}.Service.ID: missing")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}.Service.Tags: not a list of strings")
        node_name = node.get("Node") if isinstance(node.get("Node"), str) else ""
        eid = f"consul:{node_name}/{sid}"
        out[eid] = Endpoint(
            id=eid,
            address=address,
            port=port,
            labels=tuple(sorted(dict(_label(t) for t in tags).items())),
            mode=EXTERNAL_MODE,
            spiffe_id="",
        )
    return tuple(out[k] for k in sorted(out))


class ConsulImporter:
    """Keeps ``endpoints`` (by ExternalService) in step with Consul.

    Args:
        client: a py-consul ``Consul``.
        status: where failures are reported.
        publish: called (on the event loop) with the new endpoints of one ExternalService,
            or None when it is gone.
    """

    def __init__(
        self,
        client: Any,
        *,
        status: ConsulStatus,
        publish: Callable[[Key, tuple[Endpoint, ...] | None], None],
        wait: str = BLOCKING_WAIT,
    ) -> None:
        self._client = client
        self._status = status
        self._publish = publish
        self._wait = wait
        self._watchers: dict[Key, tuple[ExternalServiceSpec, asyncio.Task[None]]] = {}

    async def run(self, resources: Callable[[], Sequence[Resource]]) -> None:
        """Start, restart and stop watchers as ExternalServices are applied and deleted."""
        try:
            while True:
                try:
                    current = resources()
                except Exception:  # the store is unavailable: keep every watcher as it is
                    log.exception("consul import: the resources could not be read")
                    await asyncio.sleep(RESCAN)
                    continue
                wanted = {
                    (r.metadata.namespace, r.metadata.name): r.spec
                    for r in current
                    if isinstance(r.spec, ExternalServiceSpec)
                }
                for key, (spec, task) in list(self._watchers.items()):
                    if wanted.get(key) != spec:
                        task.cancel()
                        del self._watchers[key]
                        if key not in wanted:
                            self._publish(key, None)
                for key, spec in wanted.items():
                    if key not in self._watchers:
                        task = asyncio.create_task(self._watch(key, spec))
                        self._watchers[key] = (spec, task)
                await asyncio.sleep(RESCAN)
        finally:
            for _spec, task in self._watchers.values():
                task.cancel()

    def _query(self, spec: ExternalServiceSpec, index: str | None) -> tuple[Any, Any]:
        kwargs: dict[str, Any] = {"passing": True}
        if spec.tags:
            kwargs["tag"] = list(spec.tags)
        if index is not None:
            kwargs.update(index=index, wait=self._wait)
        return self._client.health.service(spec.consul_service, **kwargs)  # type: ignore[no-any-return]

    async def _watch(self, key: Key, spec: ExternalServiceSpec) -> None:
        index: str | None = None
        delay = 1.0
        what = f"health {spec.consul_service} (ExternalService {key[0]}/{key[1]})"
        while True:
            try:
                new_index, entries = await in_daemon_thread(self._query, spec, index)
                endpoints = endpoints_from_health(entries, spec.consul_service)
                if new_index is None or not str(new_index).isdigit():
                    raise ValueError(f"{what}: no X-Consul-Index in the answer")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Consul must never stop the mesh
                kind = self._status.failed("import", exc, what)
                log.warning("consul import failed (%s), keeping the last endpoints: %s", kind, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            self._status.succeeded("import")
            delay = 1.0
            # An index that went backwards: start over (Consul's advice).
            backwards = index is not None and int(new_index) < int(index)
            index = None if backwards else str(new_index)
            try:
                self._publish(key, endpoints)
            except Exception:  # a failed snapshot rebuild must not end the watch
                log.exception("consul import: publishing %s/%s failed", *key)
