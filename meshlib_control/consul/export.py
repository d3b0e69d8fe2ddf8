"""Export: keep Consul's catalog in step with the mesh's registry.

Each live instance (library or sidecar) is an *agent* service registration, not a catalog
one: only an agent runs TTL checks, and a TTL check is how Consul learns that the lease
still holds. The control service passes every check every :data:`PASS_INTERVAL`, and
syncs within :data:`TICK` of a registry change; a check it stops passing
goes critical after :data:`CHECK_TTL`, and Consul removes the registration
:data:`DEREGISTER_AFTER` later (a control service that died leaves nothing behind for long).

Every registration carries ``Meta["meshlib-managed"] = <trust domain>``. A sync lists the
agent's services and deregisters those with that mark that are not live instances any
more — the resync at start is just the first sync — and never touches a registration
without the mark. Writes are idempotent (same ID, same definition), so several control
replicas on one store may all export to the same agent: they converge to the same set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meshlib_control.consul.status import ConsulStatus
from meshlib_control.consul.threads import in_daemon_thread
from meshlib_control.store.records import InstanceRecord

__all__ = ["MANAGED_META", "ConsulExporter", "registration", "service_id"]

log = logging.getLogger("meshlib_control.consul")

MANAGED_META = "meshlib-managed"
TICK = 1.0  # how often the local registry is compared with what was last exported
PASS_INTERVAL = 5.0  # how often every TTL check is passed (well under CHECK_TTL)
MAX_BACKOFF = 30.0
CHECK_TTL = "30s"
DEREGISTER_AFTER = "5m"


def service_id(record: InstanceRecord) -> str:
    """The Consul service ID of an instance: ``meshlib-<instance id>``."""
    return f"meshlib-{record.id}"


def registration(record: InstanceRecord, trust_domain: str) -> dict[str, Any]:
    """What Consul should hold for *record* (the fields a sync compares)."""
    return {
        "ID": service_id(record),
        "Service": record.service,
        "Address": record.address,
        "Port": record.port,
        "Tags": sorted(["meshlib", f"mesh-namespace={record.namespace}"]
                       + [f"{k}={v}" for k, v in record.labels]),
        "Meta": {
            MANAGED_META: trust_domain,
            "spiffe-id": record.spiffe_id,
            "mesh-mode": record.mode,
            "mesh-namespace": record.namespace,
        },
    }  # fmt: skip


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(
        (sorted(current.get(k) or []) if k == "Tags" else current.get(k)) == v
        for k, v in wanted.items()
    )


class ConsulExporter:
    """Registers live instances with one Consul agent and deregisters departed ones.

    Args:
        client: a py-consul ``Consul``.
        trust_domain: the mark put on (and looked for in) every registration.
        status: where failures are reported.
    """

    def __init__(self, client: Any, *, trust_domain: str, status: ConsulStatus) -> None:
        self._client = client
        self._trust_domain = trust_domain
        self._status = status

    def sync(self, records: Iterable[InstanceRecord]) -> tuple[int, int]:
        """One pass (blocking I/O); returns (registered or updated, deregistered).

        Raises:
            Exception: whatever py-consul raised; :meth:`run` reports it.
        """
        agent = self._client.agent
        wanted = {service_id(r): registration(r, self._trust_domain) for r in records if r.port}
        services = agent.services()
        if not isinstance(services, Mapping):
            raise ValueError(
                f"/v1/agent/services answered {type(services).__name__}, not an object"
            )
        td = self._trust_domain
        ours = {
            sid: s
            for sid, s in services.items()
            if isinstance(s, Mapping) and (s.get("Meta") or {}).get(MANAGED_META) == td
        }
        changed = removed = 0
        for sid, want in wanted.items():
            if sid not in ours or not _same(ours[sid], want):
                agent.service.register(
                    want["Service"],
                    service_id=sid,
                    address=want["Address"],
                    port=want["Port"],
                    tags=want["Tags"],
                    meta=want["Meta"],
                    check={"TTL": CHECK_TTL, "DeregisterCriticalServiceAfter": DEREGISTER_AFTER},
                )
                changed += 1
            agent.check.ttl_pass(f"service:{sid}", notes="lease held in the mesh registry")
        for sid in sorted(set(ours) - set(wanted)):
            agent.service.deregister(sid)
            removed += 1
        self._status.exported = len(wanted)
        return changed, removed

    async def run(
        self,
        records: Callable[[], Iterable[InstanceRecord]],
        *,
        tick: float = TICK,
        pass_every: float = PASS_INTERVAL,
    ) -> None:
        """Sync forever: at once when the registry's live set changed (looked at every
        *tick*, locally), and every *pass_every* to pass the TTL checks.

        A failure is reported and retried with exponential backoff (up to
        :data:`MAX_BACKOFF`); it never ends the loop.
        """
        loop = asyncio.get_running_loop()
        last: object = None
        due = 0.0
        delay = tick
        while True:
            try:
                live = [r for r in records() if r.port]
            except Exception:  # the store is unavailable: try again next tick
                log.exception("consul export: the registry could not be read")
                await asyncio.sleep(tick)
                continue
            seen = sorted(repr(registration(r, self._trust_domain)) for r in live)
            if seen != last or loop.time() >= due:
                try:
                    done = await in_daemon_thread(self.sync, live)
                except Exception as exc:  # Consul must never stop the mesh
                    kind = self._status.failed("export", exc, "sync")
                    log.warning("consul export failed (%s): %s", kind, exc)
                    delay = min(max(delay * 2, tick), MAX_BACKOFF)
                    due = loop.time() + delay
                else:
                    self._status.succeeded("export")
                    if any(done):
                        log.info("consul export: %d registered or updated, %d removed", *done)
                    last, delay, due = seen, tick, loop.time() + pass_every
            await asyncio.sleep(tick if delay == tick else delay)
