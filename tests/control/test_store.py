"""The SQLite store: transactions, tokens, registry, and survival across reopen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meshlib.policy.decode import decode_documents
from meshlib_control.ca.tokens import new_token
from meshlib_control.store.sqlite import SQLiteStore
from tests.control.test_snapshot_builder import instance
from tests.records import NOW

DOCS = decode_documents(
    """
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {name: orders}
spec: {service: orders, requestsPerSecond: 5}
"""
)


def test_apply_reports_created_unchanged_configured(tmp_path):
    """Applying twice is a no-op; a change bumps the revision."""
    store = SQLiteStore(tmp_path / "m.db")
    assert [a for _, a in store.apply(DOCS, NOW)] == ["created"]
    assert [a for _, a in store.apply(DOCS, NOW)] == ["unchanged"]
    changed = decode_documents(
        "apiVersion: meshlib.io/v1\nkind: RateLimit\nmetadata: {name: orders}\n"
        "spec: {service: orders, requestsPerSecond: 9}"
    )
    assert [a for _, a in store.apply(changed, NOW)] == ["configured"]
    assert store.resource_revisions()[("RateLimit", "default", "orders")][0] == 2


def test_state_survives_reopen(tmp_path):
    """Resources, instances, tokens survive closing and reopening the database."""
    store = SQLiteStore(tmp_path / "m.db")
    store.apply(DOCS, NOW)
    store.upsert_instance(instance("a", "orders"))
    _, record = new_token(
        spiffe_id="spiffe://mesh.local/ns/default/sa/orders",
        ttl=timedelta(hours=1),
        uses=2,
        ca_fingerprint="sha256:" + "a" * 64,
        now=datetime.now(UTC),
    )
    store.add_token(record)
    store.close()
    again = SQLiteStore(tmp_path / "m.db")
    assert again.resources() == DOCS
    assert [i.id for i in again.instances()] == ["a"]
    assert again.token(record.token_id) == record


def test_consume_token_is_atomic_and_bounded(tmp_path):
    """Uses are spent one at a time and never below zero."""
    store = SQLiteStore(tmp_path / "m.db")
    _, record = new_token(
        spiffe_id="spiffe://mesh.local/ns/default/sa/orders",
        ttl=timedelta(hours=1),
        uses=1,
        ca_fingerprint="sha256:" + "a" * 64,
        now=datetime.now(UTC),
    )
    store.add_token(record)
    assert store.consume_token(record.token_id) is True
    assert store.consume_token(record.token_id) is False


def test_expire_instances(tmp_path):
    """Instances past their lease are removed; live ones stay."""
    store = SQLiteStore(tmp_path / "m.db")
    store.upsert_instance(instance("a", "orders"))
    assert store.expire_instances(NOW) == 0
    assert store.expire_instances(NOW + timedelta(minutes=1)) == 1
    assert store.instances() == ()


def test_store_flag_puts_sqlite_where_it_says(tmp_path):
    """--store sqlite:///PATH keeps the state in PATH, not in the data dir; it survives."""
    from meshlib_control.plane import ControlPlane
    from meshlib_control.settings import Settings

    path = tmp_path / "elsewhere" / "state.db"
    path.parent.mkdir()
    settings = Settings(data_dir=tmp_path / "data", store=f"sqlite://{path}")
    plane = ControlPlane(settings)
    plane.apply(
        "apiVersion: meshlib.io/v1\nkind: RateLimit\nmetadata: {name: orders}\n"
        "spec: {service: orders, requestsPerSecond: 5}"
    )
    plane.store.close()
    assert path.exists() and not (tmp_path / "data" / "mesh.db").exists()
    again = ControlPlane(settings)
    try:
        assert [r.metadata.name for r in again.store.resources()] == ["orders"]
        assert again.store.replicated is False
    finally:
        again.store.close()
