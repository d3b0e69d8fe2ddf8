"""`meshctl check` rules against a real ControlPlane: stale and rejected snapshots."""

from __future__ import annotations

import asyncio

from meshlib.identity.spiffe import SpiffeId
from meshlib.policy.snapshot import encode_snapshot
from meshlib_control.observe.checks import STALE_AFTER, run_checks
from meshlib_control.observe.instances import InstanceState
from meshlib_control.observe.targets import admin_base
from meshlib_control.plane import ControlPlane
from meshlib_control.settings import Settings

PEER = SpiffeId.parse("spiffe://mesh.local/ns/default/sa/orders")
POLICY = (
    "apiVersion: meshlib.io/v1\nkind: TrafficPolicy\nmetadata: {name: orders}\n"
    "spec: {service: orders, loadBalancer: ROUND_ROBIN}\n"
)


def _plane(tmp_path) -> ControlPlane:
    plane = ControlPlane(Settings(data_dir=tmp_path / "data"))
    plane.register("abc123", {"port": 8080, "address": "127.0.0.1"}, PEER)
    snapshot = plane.cache.get(("orders", "default", None))
    plane.report("abc123", {"version": snapshot.version}, PEER)
    record = plane.store.instance("abc123")
    assert record is not None
    plane.observer.instances["abc123"] = InstanceState(
        record, snapshot={"appliedAgoSeconds": 1.0, "snapshot": encode_snapshot(snapshot)}
    )
    return plane


def _by_name(plane: ControlPlane) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in asyncio.run(run_checks(plane, plane.observer))}


def test_current_instance_is_ok_and_stale_one_warns_after_30s(tmp_path):
    """An instance behind the control's version warns only once stale for over 30 s."""
    plane = _plane(tmp_path)
    checks = _by_name(plane)
    assert checks["control service"]["status"] == "ok"
    assert checks["snapshots"]["status"] == "ok"
    plane.apply(POLICY)  # the control would now send a new version
    checks = _by_name(plane)
    assert checks["snapshots"]["status"] == "ok"
    assert "1 receiving an update" in checks["snapshots"]["message"]
    state = plane.observer.instances["abc123"]
    assert state.stale_since is not None
    state.stale_since -= STALE_AFTER + 1
    checks = _by_name(plane)
    assert checks["snapshots"]["status"] == "warn"
    assert checks["snapshot default/orders/abc123"]["message"].startswith("stale for 3")
    plane.store.close()


def test_rejected_snapshot_fails_with_the_reason(tmp_path):
    """A reported rejection makes the check fail and names version and reason."""
    plane = _plane(tmp_path)
    plane.report("abc123", {"version": "deadbeef", "error": "spec.routes[0]: boom"}, PEER)
    checks = _by_name(plane)
    item = checks["snapshot default/orders/abc123"]
    assert item["status"] == "fail"
    assert "rejected version deadbeef: spec.routes[0]: boom" in item["message"]
    assert checks["snapshots"]["status"] == "fail"
    plane.store.close()


def test_admin_base_uses_the_address_or_loopback(tmp_path):
    """Scrape URLs come from address and adminPort; client-only instances use 127.0.0.1."""
    plane = _plane(tmp_path)
    record = plane.store.instance("abc123")
    assert record is not None
    assert admin_base(record) is None
    plane.register("abc123", {"port": 8080, "address": "127.0.0.1", "adminPort": 9901}, PEER)
    plane.register("client1", {"port": 0, "adminPort": 9902}, PEER)
    with_port = plane.store.instance("abc123")
    client = plane.store.instance("client1")
    assert with_port is not None and client is not None
    assert admin_base(with_port) == "http://127.0.0.1:9901"
    assert admin_base(client) == "http://127.0.0.1:9902"
    plane.store.close()
