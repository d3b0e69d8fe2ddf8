"""The etcd store against a real 3-member etcd cluster: two stores stand for two replicas."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meshlib.errors import ConfigError
from meshlib.policy.decode import decode_documents
from meshlib_control.ca.rebootstrap import new_credential
from meshlib_control.ca.tokens import new_token
from meshlib_control.errors import ApiError
from meshlib_control.settings import Settings, parse_store
from meshlib_control.store.base import StoreUnavailable
from meshlib_control.store.etcd import EtcdStore
from tests.control.test_snapshot_builder import instance
from tests.etcd_cluster import EtcdCluster
from tests.records import NOW

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
DOCS = decode_documents(
    "apiVersion: meshlib.io/v1\nkind: RateLimit\nmetadata: {name: orders}\n"
    "spec: {service: orders, requestsPerSecond: 5}"
)
CHANGED = decode_documents(
    "apiVersion: meshlib.io/v1\nkind: RateLimit\nmetadata: {name: orders}\n"
    "spec: {service: orders, requestsPerSecond: 9}"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One 3-member cluster for the module; each test uses its own key prefix."""
    etcd = EtcdCluster(tmp_path_factory.mktemp("etcd"), members=3).start()
    yield etcd
    etcd.stop()


@pytest.fixture
def stores(cluster: EtcdCluster) -> Iterator[list[EtcdStore]]:
    """Two stores (two replicas' views) on one fresh prefix; a third can be opened."""
    prefix = f"/test-{uuid.uuid4().hex[:8]}/"
    endpoints = tuple(url.removeprefix("http://") for url in cluster.client_urls)
    opened = [EtcdStore(endpoints, prefix=prefix, grace=0.5) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


def _eventually(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout}s")


def _token(uses: int):  # type: ignore[no-untyped-def]
    return new_token(
        spiffe_id=ORDERS,
        ttl=timedelta(hours=1),
        uses=uses,
        ca_fingerprint="sha256:" + "a" * 64,
        now=datetime.now(UTC),
    )[1]


def test_revisions_agree_across_replicas(stores: list[EtcdStore]) -> None:
    """created → unchanged → configured; both replicas read the same revisions and bodies."""
    a, b = stores
    assert [action for _, action in a.apply(DOCS, NOW)] == ["created"]
    assert [action for _, action in b.apply(DOCS, NOW)] == ["unchanged"]
    assert [action for _, action in b.apply(CHANGED, NOW)] == ["configured"]
    _eventually(lambda: a.resources() == CHANGED)
    assert a.resource_revisions() == b.resource_revisions()
    assert a.resource_revisions()[("RateLimit", "default", "orders")][0] == 2
    assert b.delete_resource("RateLimit", "default", "orders") is True
    assert b.delete_resource("RateLimit", "default", "orders") is False
    _eventually(lambda: a.resources() == ())


def test_a_change_on_one_replica_notifies_the_other(stores: list[EtcdStore]) -> None:
    """A resource or a new instance written by A calls B's subscriber; A's own writes do not."""
    a, b = stores
    seen_a: list[int] = []
    seen_b: list[int] = []
    a.subscribe(lambda: seen_a.append(1))
    b.subscribe(lambda: seen_b.append(1))
    a.apply(DOCS, NOW)
    _eventually(lambda: len(seen_b) >= 1)
    before = len(seen_b)
    a.upsert_instance(instance("i1", "orders"))
    _eventually(lambda: len(seen_b) > before and b.instance("i1") is not None)
    assert seen_a == []


def test_one_use_token_spent_once_across_replicas(stores: list[EtcdStore]) -> None:
    """Two replicas spending the same one-use token at once: exactly one succeeds."""
    a, b = stores
    for _ in range(5):
        record = _token(1)
        a.add_token(record)
        _eventually(lambda r=record: b.token(r.token_id) is not None)  # type: ignore[misc]
        results: list[bool] = []
        barrier = threading.Barrier(2)

        def spend(
            store: EtcdStore, token_id: str, barrier: threading.Barrier, results: list[bool]
        ) -> None:
            barrier.wait()
            results.append(store.consume_token(token_id))

        threads = [
            threading.Thread(target=spend, args=(s, record.token_id, barrier, results))
            for s in (a, b)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(results) == [False, True]
        stored = a.token(record.token_id)
        assert stored is not None and stored.uses_left == 0
    assert a.consume_token("0" * 16) is False


def test_rebootstrap_credential_spent_once_across_replicas(stores: list[EtcdStore]) -> None:
    """A credential spent on A cannot be spent again on B; its successor is stored."""
    a, b = stores
    now = datetime.now(UTC)
    _, first = new_credential(spiffe_id=ORDERS, instance_id="i1", ttl=timedelta(days=1), now=now)
    assert a.issue_rebootstrap(first, spend=None, now=now)
    _, second = new_credential(spiffe_id=ORDERS, instance_id="i1", ttl=timedelta(days=1), now=now)
    _, third = new_credential(spiffe_id=ORDERS, instance_id="i1", ttl=timedelta(days=1), now=now)
    _eventually(lambda: b.rebootstrap_credential(first.credential_id) is not None)
    assert a.issue_rebootstrap(second, spend=first.credential_id, now=now) is True
    assert b.issue_rebootstrap(third, spend=first.credential_id, now=now) is False
    assert b.rebootstrap_credential(third.credential_id) is None
    spent = b.rebootstrap_credential(first.credential_id)
    assert spent is not None and spent.spent_at is not None
    # B revokes what its mirror holds: wait until A's successor has reached it.
    _eventually(lambda: b.rebootstrap_credential(second.credential_id) is not None)
    assert b.revoke_rebootstrap(ORDERS) == 1  # the successor, unspent


def test_instance_lease_is_kept_by_any_replica_and_expires_in_etcd(
    stores: list[EtcdStore],
) -> None:
    """Heartbeats through either replica keep the lease; without them etcd deletes the key."""
    a, b = stores
    now = datetime.now(UTC)
    record = replace(instance("i1", "orders"), last_seen=now, expires_at=now + timedelta(seconds=2))
    assert a.upsert_instance(record) is None
    _eventually(lambda: b.instance("i1") is not None)
    lease = b._mirror.get("inst", "i1").lease  # type: ignore[union-attr]
    for _ in range(3):  # 3 s of heartbeats through B on a 2 s lease
        time.sleep(1.0)
        beat = datetime.now(UTC)
        b.upsert_instance(replace(record, last_seen=beat, expires_at=beat + timedelta(seconds=2)))
    assert b._mirror.get("inst", "i1").lease == lease  # type: ignore[union-attr]
    assert [r.id for r in a.live_instances(datetime.now(UTC))] == ["i1"]
    assert a.expire_instances(datetime.now(UTC)) == 0
    # Lapsed at its expiry (the sweeper's answer rebuilds snapshots), deleted by etcd when
    # the lease, 0.5 s longer (the stores' recovery grace), runs out.
    _eventually(lambda: a.live_instances(datetime.now(UTC)) == (), timeout=3.0)
    assert a.expire_instances(datetime.now(UTC)) == 1
    assert a.expire_instances(datetime.now(UTC)) == 0
    _eventually(lambda: a.instance("i1") is None and b.instance("i1") is None, timeout=6.0)


def test_registry_ownership_and_reports(stores: list[EtcdStore]) -> None:
    """Claims hold across replicas; reports land on the record; owners are bounded."""
    a, b = stores
    assert a.claim_instance("i1", ORDERS, NOW, keep=2) == ORDERS
    _eventually(lambda: b.instance_owner("i1") == ORDERS)
    other = "spiffe://mesh.local/ns/default/sa/evil"
    assert b.claim_instance("i1", other, NOW, keep=2) == ORDERS
    a.upsert_instance(instance("i1", "orders"))
    _eventually(lambda: b.instance("i1") is not None)
    assert b.record_report("i1", "v1", None) is True
    _eventually(lambda: (a.instance("i1") or instance("x", "y")).applied_version == "v1")
    assert b.record_report("nope", "v1", None) is False
    for iid in ("l1", "l2", "l3"):
        a.claim_instance(iid, ORDERS, NOW, keep=2)
    owned = {iid for iid, _ in a.owned_instances()}
    assert "i1" in owned and "l3" in owned and len(owned) <= 3
    assert a.release_instance("i1") is True and a.release_instance("i1") is False


def test_a_new_replica_loads_everything_before_it_answers(
    stores: list[EtcdStore], cluster: EtcdCluster
) -> None:
    """A store opened after the writes reads them all at once (no stale first view)."""
    a, _ = stores
    a.apply(DOCS, NOW)
    record = _token(2)
    a.add_token(record)
    a.set_meta("trust_domain", "mesh.local")
    late = EtcdStore(a.endpoints, prefix=a._mirror.prefix)
    try:
        assert late.resources() == DOCS
        assert late.token(record.token_id) == record
        assert late.get_meta("trust_domain") == "mesh.local"
    finally:
        late.close()


def test_store_url_is_checked_naming_the_flag(tmp_path: Path) -> None:
    """Bad --store values are refused naming --store; etcd needs the shared CA files."""
    assert parse_store(None, tmp_path).path == tmp_path / "mesh.db"
    assert parse_store("sqlite:///x/m.db", tmp_path).path == Path("/x/m.db")
    spec = parse_store("etcd://127.0.0.1:1,127.0.0.1:2/team-a", tmp_path)
    assert spec.endpoints == ("127.0.0.1:1", "127.0.0.1:2") and spec.prefix == "/team-a/"
    for bad in ("etcd://", "etcd://host", "redis://x:1", "sqlite://rel", "x", "etcd://h:1/a b"):
        with pytest.raises(ConfigError, match="--store"):
            parse_store(bad, tmp_path)
    with pytest.raises(ConfigError, match="--ca-cert"):
        Settings(data_dir=tmp_path, store="etcd://127.0.0.1:2379")


def test_quorum_loss_refuses_writes_keeps_reads_and_recovers(tmp_path: Path) -> None:
    """Without quorum writes fail fast with 503 naming the cause; reads go on; then resume."""
    etcd = EtcdCluster(tmp_path / "etcd", members=3).start()
    endpoints = tuple(url.removeprefix("http://") for url in etcd.client_urls)
    store = EtcdStore(endpoints, prefix="/q/", grace=60.0)
    try:
        store.apply(DOCS, NOW)
        now = datetime.now(UTC)
        short = replace(
            instance("i1", "orders"), last_seen=now, expires_at=now + timedelta(seconds=1)
        )
        store.upsert_instance(short)
        etcd.kill(1)
        etcd.kill(2)
        _eventually(lambda: not store._mirror.writable, timeout=5.0)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as refused:
            store.apply(CHANGED, NOW)
        assert time.monotonic() - started < 1.0
        assert refused.value.status == 503 and "quorum" in refused.value.message
        assert store.resources() == DOCS  # the cached view still answers
        etcd.start_member(1)
        etcd.start_member(2)
        etcd.wait_healthy([0, 1, 2])
        _eventually(lambda: store._mirror.writable, timeout=5.0)
        assert [action for _, action in store.apply(CHANGED, NOW)] == ["configured"]
        assert store.resources() == CHANGED
        # Its heartbeats were refused, not missed: live through the grace after the outage.
        assert [r.id for r in store.live_instances(datetime.now(UTC))] == ["i1"]
        assert store.expire_instances(datetime.now(UTC)) == 0
        store.grace = 0.0  # the grace is over (instead of waiting a minute)
        assert store.live_instances(datetime.now(UTC)) == ()
        assert store.expire_instances(datetime.now(UTC)) == 1
    finally:
        store.close()
        etcd.stop()


def test_control_serve_refuses_a_bad_store_naming_the_flag(tmp_path: Path) -> None:
    """``meshctl control serve --store …`` with a bad value fails at once with the reason."""
    import subprocess
    import sys

    for bad, reason in (
        ("redis://127.0.0.1:6379", "--store: scheme 'redis' is not etcd, etcds or sqlite"),
        ("etcd://127.0.0.1:2379", "--store etcd://: give --ca-cert and --ca-key"),
    ):
        meshctl = [sys.executable, "-m", "meshlib_control.cli", "--data-dir", str(tmp_path)]
        result = subprocess.run(
            [*meshctl, "control", "serve", "--store", bad, "--listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0
        assert reason in result.stderr, result.stderr
        assert not (tmp_path / "mesh.db").exists()  # nothing opened, nothing written


def test_a_watch_behind_a_compaction_reloads_everything(
    stores: list[EtcdStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A replica whose watch resumes from a compacted revision reloads the prefix and
    notices what differs from the view it held."""
    import socket

    a, b = stores
    b.apply(DOCS, NOW)
    b.apply(CHANGED, NOW)
    _eventually(lambda: a.resources() == CHANGED)
    revision, _ = b._client.range(b._mirror.prefix, prefix=True)
    b._client.post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
    notices: list[int] = []
    a.subscribe(lambda: notices.append(1))
    with a._mirror._cond:  # make A's view stale: nothing seen since revision 1
        a._mirror._data["res"] = {}
        a._mirror.revision = 1
        sock = a._mirror._watch_client._watch_socket
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # its member "went away": A resumes from revision 2
    _eventually(lambda: a._mirror.kind("res") != {} and a._mirror.revision >= revision)
    assert a.resources() == CHANGED
    assert notices
    assert "compacted past revision 1: reloading" in caplog.text


def test_etcd_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """etcds://…?ca=&cert=&key= talks TLS with a client certificate; without a trusted client
    certificate etcd refuses, and the store says so."""
    from meshlib_control.store.open import open_store
    from tests.etcd_cluster import EtcdTLS

    tls = EtcdTLS.create(tmp_path / "tls")
    etcd = EtcdCluster(tmp_path / "etcd", members=3, tls=tls).start()
    try:
        spec = parse_store(etcd.store_url, tmp_path)
        assert spec.tls == (tls.ca, tls.client_cert, tls.client_key)
        store = open_store(spec)
        try:
            assert [action for _, action in store.apply(DOCS, NOW)] == ["created"]
            assert store.resources() == DOCS
        finally:
            store.close()
        # A client certificate from another CA: etcd refuses it, the store says so.
        other = EtcdTLS.create(tmp_path / "other")
        with pytest.raises(ApiError, match="cannot load the state from etcd") as refused:
            EtcdStore(
                etcd.endpoints,
                tls=(tls.ca, other.client_cert, other.client_key),
                load_timeout=0.5,
            )
        assert refused.value.status == 503 and "127.0.0.1" in refused.value.message
    finally:
        etcd.stop()
    for bad, reason in (
        ("etcds://127.0.0.1:1", "needs ca=ABSOLUTE_PATH"),
        (f"etcds://127.0.0.1:1?ca={tls.ca}&cert={tls.client_cert}&key=/nope", "key=/nope"),
        (f"etcds://127.0.0.1:1?ca={tls.ca}&cert=x&key=y&pin=1", "unknown parameter 'pin'"),
        (f"etcd://127.0.0.1:1?ca={tls.ca}", "belong to etcds://"),
    ):
        with pytest.raises(ConfigError, match="--store") as refused:
            parse_store(bad, tmp_path)
        assert reason in str(refused.value)
