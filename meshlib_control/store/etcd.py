"""etcd v3 store: the state of any number of control replicas, in one etcd cluster.

Keys live under a prefix (``/meshlib/`` unless the ``--store`` URL names another), one
key per record: ``res/<kind>/<namespace>/<name>``, ``inst/<id>``, ``owner/<id>``,
``cert/<serial>``, ``token/<id>``, ``reboot/<id>``, ``meta/<key>``. Reads come from the
replica's :class:`~meshlib_control.store.etcd_mirror.Mirror`; writes are etcd
transactions. Writes that must not race between replicas (a resource batch, a token use,
a re-bootstrap credential's spend, an instance id's claim, a report) compare the keys'
``mod_revision`` with what was read and retry a bounded number of times.

Instance registrations are attached to etcd leases of the instance TTL: the lease is the
instance's, kept alive by whichever replica receives its heartbeat, so an instance
outlives the replica it last talked to and expires in etcd when it stops heartbeating,
whichever replicas are up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from meshlib.policy.decode import decode_resource, encode_resource
from meshlib.policy.model import Resource
from meshlib_control.store.base import StoreUnavailable
from meshlib_control.store.codec import decode, encode, extra_field
from meshlib_control.store.etcd_client import KV, EtcdClient
from meshlib_control.store.etcd_mirror import LOAD_TIMEOUT, Mirror
from meshlib_control.store.etcd_tokens import TokenOperations
from meshlib_control.store.records import CertificateRecord, InstanceRecord, timestamp

__all__ = ["DEFAULT_PREFIX", "EtcdStore"]

DEFAULT_PREFIX = "/meshlib/"
# After etcd refused writes, heartbeats resume only as fast as the agents' failover backoff
# lets them (at most 30 s, meshlib.runtime.control_client.FAILOVER_MAX, plus a heartbeat
# interval): for this long after an outage no registration is dropped for a missed lease.
RECOVERY_GRACE = 45.0
CAS_ATTEMPTS = 8
OWNER_TOUCH_SECONDS = 60.0  # an owner's last_seen is rewritten at most this often


class EtcdStore(TokenOperations):
    """The store on etcd: *endpoints* are the members' ``host:port`` client addresses."""

    replicated = True

    def __init__(
        self,
        endpoints: tuple[str, ...],
        *,
        prefix: str = DEFAULT_PREFIX,
        grace: float = RECOVERY_GRACE,
        tls: tuple[Path, Path, Path] | None = None,
        load_timeout: float = LOAD_TIMEOUT,
    ) -> None:
        self.endpoints = endpoints
        self.grace = grace
        self._lapsed: set[str] = set()  # ids whose expiry :meth:`expire_instances` reported
        self._client = EtcdClient(endpoints, tls=tls)
        self._callbacks: list[Callable[[], None]] = []
        self._resources: tuple[int, tuple[Resource, ...]] = (-1, ())
        self._mirror = Mirror(self._client, prefix, self._changed, load_timeout=load_timeout)

    def close(self) -> None:
        """Stop watching and close the connections."""
        self._mirror.close()
        self._client.close()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call *callback* (on the watch thread) when another writer changed the mesh state."""
        self._callbacks.append(callback)

    def _changed(self, changes: list[tuple[str, KV | None, KV | None]]) -> None:
        for kind, old, new in changes:
            # meta: the trust bundle (root rotation) is in every snapshot.
            if kind in ("res", "meta") or (kind == "inst" and _endpoint(old) != _endpoint(new)):
                for callback in self._callbacks:
                    callback()
                return

    # ------------------------------------------------------------------ transactions

    def _write(self, compare: list[dict[str, Any]], ops: list[dict[str, Any]]) -> bool:
        self._mirror.check_writable()
        if not ops:
            return True
        with self._mirror.writing() as own:
            ok, revision = self._client.txn(compare, ops)
            if ok:
                own(revision)
        if ok:
            self._mirror.wrote(revision)
        return ok

    def _cas(self, keys: Iterable[str], plan: Callable[[dict[str, KV | None]], Any]) -> Any:
        """Read *keys* (linearizable), let *plan* decide, write if nothing changed meanwhile.

        *plan* returns (result, ops): the ops run only if every key still has the
        revision read; otherwise it is asked again with the new values.
        """
        keys = list(keys)
        for _ in range(CAS_ATTEMPTS):
            self._mirror.check_writable()
            current = {key: self._client.get(key) for key in keys}
            result, ops = plan(current)
            compare = [
                EtcdClient.unchanged(key, kv.mod_revision if kv else 0)
                for key, kv in current.items()
            ]
            if self._write(compare, ops):
                return result
        raise StoreUnavailable(f"etcd: {keys[:3]} kept changing under {CAS_ATTEMPTS} attempts")

    # ------------------------------------------------------------------ resources

    def apply(self, resources: Sequence[Resource], now: datetime) -> list[tuple[Resource, str]]:
        """Create or replace every resource in one transaction."""
        bodies = {
            self._key("res", "/".join(r.key)): (
                r,
                json.dumps(encode_resource(r), sort_keys=True),
            )
            for r in resources
        }

        def plan(current: dict[str, KV | None]) -> tuple[list[tuple[Resource, str]], list[Any]]:
            results: list[tuple[Resource, str]] = []
            ops: list[dict[str, Any]] = []
            for key, (resource, body) in bodies.items():
                kv = current[key]
                stored = json.loads(kv.value) if kv else None
                if stored is None:
                    action, revision = "created", 1
                elif stored["body"] == body:
                    results.append((resource, "unchanged"))
                    continue
                else:
                    action, revision = "configured", stored["revision"] + 1
                value = {"body": body, "revision": revision, "updatedAt": timestamp(now)}
                ops.append(EtcdClient.put(key, json.dumps(value, sort_keys=True).encode()))
                results.append((resource, action))
            return results, ops

        results: list[tuple[Resource, str]] = self._cas(bodies, plan)
        return results

    def delete_resource(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one resource; False if it did not exist."""
        key = self._key("res", f"{kind}/{namespace}/{name}")
        found: bool = self._cas(
            [key], lambda cur: (cur[key] is not None, [EtcdClient.delete(key)] if cur[key] else [])
        )
        return found

    def resources(self) -> tuple[Resource, ...]:
        """Every stored resource, in (kind, namespace, name) order (decoded once per change)."""
        generation = self._mirror.generations.get("res", 0)
        if self._resources[0] != generation:
            stored = self._mirror.kind("res")
            decoded = tuple(
                decode_resource(json.loads(json.loads(stored[name].value)["body"]))
                for name in sorted(stored, key=lambda n: tuple(n.split("/")))
            )
            self._resources = (generation, decoded)
        return self._resources[1]

    def resource_revisions(self) -> dict[tuple[str, str, str], tuple[int, str]]:
        """(kind, namespace, name) → (revision, updated_at)."""
        out: dict[tuple[str, str, str], tuple[int, str]] = {}
        for name, kv in self._mirror.kind("res").items():
            kind, namespace, resource = name.split("/", 2)
            value = json.loads(kv.value)
            out[(kind, namespace, resource)] = (value["revision"], value["updatedAt"])
        return out

    # ------------------------------------------------------------------ instances

    def _lease_for(self, record: InstanceRecord, old: KV | None) -> int:
        lease = int(extra_field(old.value, "lease") or 0) if old else 0
        if lease and self._client.keepalive(lease) > 0:
            return lease
        # The lease outlives the registration by the recovery grace, so that etcd keeps
        # the key while heartbeats catch up after an outage; the registration's own
        # expiry (expires_at) says whether it is live the rest of the time.
        ttl = (record.expires_at - record.last_seen).total_seconds() + self.grace
        return self._client.grant(max(1, math.ceil(ttl)))

    def upsert_instance(self, record: InstanceRecord) -> InstanceRecord | None:
        """Store *record*, keeping its etcd lease alive (or granting one)."""
        self._mirror.check_writable()
        old = self._mirror.get("inst", record.id)
        lease = self._lease_for(record, old)
        key = self._key("inst", record.id)
        self._write([], [EtcdClient.put(key, encode(record, lease=lease), lease)])
        return decode(InstanceRecord, old.value) if old else None

    def instance(self, instance_id: str) -> InstanceRecord | None:
        """One instance by id."""
        kv = self._mirror.get("inst", instance_id)
        return decode(InstanceRecord, kv.value) if kv else None

    def instances(self) -> tuple[InstanceRecord, ...]:
        """Every instance whose lease holds, by (namespace, service, id)."""
        records = [decode(InstanceRecord, kv.value) for kv in self._mirror.kind("inst").values()]
        return tuple(sorted(records, key=lambda r: (r.namespace, r.service, r.id)))

    def live_instances(self, now: datetime) -> tuple[InstanceRecord, ...]:
        """Instances whose registration has not expired at *now*.

        While etcd refuses writes, and for :data:`RECOVERY_GRACE` after, every stored
        instance counts as live: its heartbeats were refused (or are still backing off),
        not missed, and etcd keeps its lease alive meanwhile.
        """
        records = self.instances()
        if self._mirror.unwritable_within(self.grace):
            return records
        return tuple(r for r in records if r.expires_at >= now)

    def delete_instance(self, instance_id: str) -> bool:
        """Remove one instance (and end its lease); False if unknown."""
        old = self._mirror.get("inst", instance_id)
        if old is None:
            return False
        self._write([], [EtcdClient.delete(self._key("inst", instance_id))])
        if old.lease:
            self._client.revoke(old.lease)
        return True

    def expire_instances(self, now: datetime) -> int:
        """How many instances lapsed since the last call (etcd deletes their keys later,
        when their lease runs out); a positive answer makes the plane rebuild snapshots."""
        live = {r.id for r in self.live_instances(now)}
        lapsed = set(self._mirror.kind("inst")) - live
        new = lapsed - self._lapsed
        self._lapsed = lapsed
        return len(new)

    def live_instances_of(self, spiffe_id: str, now: datetime) -> int:
        """How many unexpired registrations *spiffe_id* holds."""
        return sum(1 for r in self.live_instances(now) if r.spiffe_id == spiffe_id)

    def record_report(self, instance_id: str, version: str, error: str | None) -> bool:
        """Store which snapshot an instance applied or rejected; False if unknown."""
        key = self._key("inst", instance_id)

        def plan(current: dict[str, KV | None]) -> tuple[bool, list[Any]]:
            kv = current[key]
            if kv is None:
                return False, []
            record = decode(InstanceRecord, kv.value)
            if error is None:
                record = replace(
                    record, applied_version=version, rejected_version=None, rejection=None
                )
            else:
                record = replace(record, rejected_version=version, rejection=error)
            return True, [EtcdClient.put(key, encode(record, lease=kv.lease), kv.lease)]

        found: bool = self._cas([key], plan)
        return found

    # ------------------------------------------------------------------ instance ownership

    def instance_owner(self, instance_id: str) -> str | None:
        """The SPIFFE ID that owns *instance_id*; None if unowned."""
        kv = self._mirror.get("owner", instance_id)
        return str(json.loads(kv.value)["spiffe_id"]) if kv else None

    def claim_instance(self, instance_id: str, spiffe_id: str, now: datetime, *, keep: int) -> str:
        """Own *instance_id* for *spiffe_id* unless another identity does (see SQLiteStore)."""
        key = self._key("owner", instance_id)
        seen = self._mirror.get("owner", instance_id)
        if seen is not None:  # an id never changes owner while owned: the mirror may answer
            stored = json.loads(seen.value)
            fresh = now - datetime.fromisoformat(stored["last_seen"])
            if stored["spiffe_id"] != spiffe_id or fresh.total_seconds() < OWNER_TOUCH_SECONDS:
                return str(stored["spiffe_id"])

        def plan(current: dict[str, KV | None]) -> tuple[str, list[Any]]:
            kv = current[key]
            if kv is not None:
                stored = json.loads(kv.value)
                if stored["spiffe_id"] != spiffe_id:
                    return str(stored["spiffe_id"]), []
                seen = datetime.fromisoformat(stored["last_seen"])
                if (now - seen).total_seconds() < OWNER_TOUCH_SECONDS:
                    return spiffe_id, []
                stored["last_seen"] = timestamp(now)
                return spiffe_id, [EtcdClient.put(key, _json(stored))]
            value = {"spiffe_id": spiffe_id, "claimed_at": timestamp(now)}
            value["last_seen"] = timestamp(now)
            return spiffe_id, [
                EtcdClient.put(key, _json(value)),
                *self._release_beyond(spiffe_id, instance_id, keep),
            ]

        owner: str = self._cas([key], plan)
        return owner

    def _release_beyond(self, spiffe_id: str, instance_id: str, keep: int) -> list[Any]:
        registered = set(self._mirror.kind("inst"))
        lapsed = sorted(
            (
                (json.loads(kv.value)["last_seen"], name)
                for name, kv in self._mirror.kind("owner").items()
                if name != instance_id
                and name not in registered
                and json.loads(kv.value)["spiffe_id"] == spiffe_id
            ),
            reverse=True,
        )
        return [EtcdClient.delete(self._key("owner", n)) for _, n in lapsed[max(keep - 1, 0) :]]

    def release_instance(self, instance_id: str) -> bool:
        """Forget who owns *instance_id*; False if unowned."""
        if self._mirror.get("owner", instance_id) is None:
            return False
        self._write([], [EtcdClient.delete(self._key("owner", instance_id))])
        return True

    def owned_instances(self) -> tuple[tuple[str, str], ...]:
        """Every (instance id, owner SPIFFE ID)."""
        owners = self._mirror.kind("owner")
        pairs = ((n, str(json.loads(kv.value)["spiffe_id"])) for n, kv in owners.items())
        return tuple(sorted(pairs, key=lambda p: (p[1], p[0])))

    # ------------------------------------------------------------------ certificates, meta

    def record_certificate(self, record: CertificateRecord) -> None:
        """Remember an issued certificate."""
        self._write([], [EtcdClient.put(self._key("cert", record.serial), encode(record))])

    def certificates(self) -> tuple[CertificateRecord, ...]:
        """Every issued certificate, newest first."""
        records = [decode(CertificateRecord, kv.value) for kv in self._mirror.kind("cert").values()]
        return tuple(sorted(records, key=lambda r: r.issued_at, reverse=True))

    def get_meta(self, key: str) -> str | None:
        """A small named value."""
        kv = self._mirror.get("meta", key)
        return kv.value.decode() if kv else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a small named value."""
        self._write([], [EtcdClient.put(self._key("meta", key), value.encode())])


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _endpoint(kv: KV | None) -> tuple[Any, ...] | None:
    return decode(InstanceRecord, kv.value).endpoint_key() if kv else None
