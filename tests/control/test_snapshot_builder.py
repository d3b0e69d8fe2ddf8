"""The pure snapshot builder and the watch cache."""

from __future__ import annotations

import asyncio

from meshlib.policy.decode import decode_documents
from meshlib_control.snapshot.builder import MeshState, build_snapshot
from meshlib_control.snapshot.cache import SnapshotCache
from meshlib_control.store.sqlite import InstanceRecord
from tests.records import instance_record

POLICIES = decode_documents(
    """
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: ns-wide, namespace: default}
spec: {mode: PERMISSIVE}
---
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: orders-strict, namespace: default}
spec: {service: orders, mode: STRICT}
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: inventory-allow, namespace: default}
spec:
  service: inventory
  rules: [{from: {principals: ["spiffe://mesh.local/ns/default/sa/orders"]}}]
---
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: inventory, namespace: default}
spec: {service: inventory, subsets: [{name: v1, labels: {version: v1}}]}
"""
)


def instance(iid: str, service: str, port: int = 8443, ns: str = "default") -> InstanceRecord:
    return instance_record(iid, service, port=port, ns=ns, labels={"version": "v1"})


STATE = MeshState(
    "mesh.local",
    POLICIES,
    (instance("a", "orders"), instance("b", "inventory"), instance("c", "client", port=0)),
)


def test_service_policy_beats_namespace_policy():
    """A service's own PeerAuthentication wins over the namespace-wide one."""
    assert build_snapshot(STATE, service="orders", namespace="default").inbound.peer_mode == (
        "STRICT"
    )
    assert build_snapshot(STATE, service="inventory", namespace="default").inbound.peer_mode == (
        "PERMISSIVE"
    )


def test_mesh_default_is_strict():
    """With no PeerAuthentication at all, STRICT applies."""
    state = MeshState("mesh.local", (), STATE.instances)
    assert build_snapshot(state, service="orders", namespace="default").inbound.peer_mode == (
        "STRICT"
    )


def test_inbound_authorization_is_scoped_to_the_service():
    """Only policies selecting the caller's own service travel in its snapshot."""
    inv = build_snapshot(STATE, service="inventory", namespace="default")
    orders = build_snapshot(STATE, service="orders", namespace="default")
    assert [r.metadata.name for r in inv.inbound.authorization] == ["inventory-allow"]
    assert orders.inbound.authorization == ()


def test_services_and_endpoints():
    """Serving instances become endpoints; client-only instances (port 0) do not."""
    snap = build_snapshot(STATE, service="orders", namespace="default")
    names = {s.name: s for s in snap.services}
    assert set(names) == {"orders", "inventory"}
    assert [e.id for e in names["inventory"].endpoints] == ["b"]
    assert names["inventory"].traffic_policy is not None
    assert names["inventory"].spiffe_id == "spiffe://mesh.local/ns/default/sa/inventory"


def test_dependencies_scope_the_outbound_view():
    """Declared dependencies limit the services a snapshot carries."""
    snap = build_snapshot(STATE, service="orders", namespace="default", dependencies=("inventory",))
    assert [s.name for s in snap.services] == ["inventory"]


def test_version_is_deterministic_and_content_addressed():
    """The same state gives the same version; a change gives another."""
    one = build_snapshot(STATE, service="orders", namespace="default")
    two = build_snapshot(STATE, service="orders", namespace="default")
    assert one.version == two.version
    moved = MeshState("mesh.local", POLICIES, (instance("a", "orders", port=9999),))
    assert build_snapshot(moved, service="orders", namespace="default").version != one.version


def test_cache_wakes_only_changed_watches():
    """A state change wakes the watches whose snapshot changed, not the others."""

    async def scenario() -> tuple[object, object]:
        cache = SnapshotCache(STATE)
        inv_key = ("inventory", "default", ("inventory",))
        client_key = ("client", "default", ("orders",))
        inv_version = cache.get(inv_key).version
        client_version = cache.get(client_key).version
        inv_watch = asyncio.create_task(cache.watch(inv_key, inv_version, 2))
        client_watch = asyncio.create_task(cache.watch(client_key, client_version, 0.3))
        await asyncio.sleep(0.05)
        moved = MeshState(
            "mesh.local", POLICIES, (*STATE.instances, instance("d", "inventory", port=9000))
        )
        assert cache.set_state(moved) == 1
        return await inv_watch, await client_watch

    inv, client = asyncio.run(scenario())
    assert inv is not None and len(inv.services[0].endpoints) == 2  # type: ignore[attr-defined]
    assert client is None


def test_stale_version_answers_at_once():
    """A watcher with an old version gets the current snapshot immediately."""
    cache = SnapshotCache(STATE)
    found = asyncio.run(cache.watch(("orders", "default", None), "old", 5))
    assert found is not None


def test_watch_body_is_rendered_once_per_version():
    """Every watcher of a key shares one rendered body until the snapshot changes."""
    import json

    from meshlib.policy.snapshot import decode_snapshot, encode_snapshot

    cache = SnapshotCache(STATE)
    key = ("inventory", "default", None)
    snapshot = cache.get(key)
    body = cache.body(key, snapshot)
    assert cache.body(key, snapshot) is body  # the same bytes, not rendered again
    assert json.loads(body) == encode_snapshot(snapshot)
    assert decode_snapshot(json.loads(body)).version == snapshot.version
    moved = MeshState(
        "mesh.local", POLICIES, (*STATE.instances, instance("d", "inventory", port=9000))
    )
    cache.set_state(moved)
    fresh = cache.get(key)
    assert fresh.version != snapshot.version
    assert json.loads(cache.body(key, fresh))["version"] == fresh.version


def test_built_version_is_the_content_hash_of_what_is_sent():
    """The builder's shortcut (entry digests once per state) gives compute_version's value,
    for scoped and unscoped callers, and a fresh state gives the same snapshots."""
    from dataclasses import replace

    from meshlib.policy.snapshot import compute_version

    for deps in (None, ("orders",), ("inventory", "orders")):
        built = build_snapshot(STATE, service="client", namespace="default", dependencies=deps)
        assert built.version == compute_version(built)
        again = build_snapshot(
            replace(STATE), service="client", namespace="default", dependencies=deps
        )
        assert again == built
