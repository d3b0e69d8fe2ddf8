"""SQLite store (WAL) for resources, the instance registry, certificates, tokens and reports.

Every write is one transaction; a batch of resources is applied whole or not at all.
Calls are short and made from the control service's event loop under one lock; SQLite in
WAL mode keeps readers (``meshctl get``) off the writer's back.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from meshlib.policy.decode import decode_resource, encode_resource
from meshlib.policy.model import Resource
from meshlib_control.ca.rebootstrap import RebootstrapRecord
from meshlib_control.ca.tokens import TokenRecord
from meshlib_control.store.records import (
    CertificateRecord,
    InstanceRecord,
    from_timestamp,
    timestamp,
)
from meshlib_control.store.schema import SCHEMA

__all__ = ["CertificateRecord", "InstanceRecord", "SQLiteStore"]


class SQLiteStore:
    """All persistent state of one control service, in ``<data-dir>/mesh.db``."""

    replicated = False  # one process: nobody else writes, there is nothing to follow

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a data dir written by an earlier version up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(instances)")}
        if "source" not in columns:
            self._db.execute("ALTER TABLE instances ADD COLUMN source TEXT")
        # Registrations made before ids were owned: their identity owns them from now on.
        self._db.execute(
            "INSERT OR IGNORE INTO instance_owners "
            "SELECT id, spiffe_id, registered_at, last_seen FROM instances"
        )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Nothing to follow: this process is the only writer."""

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    # ------------------------------------------------------------------ resources

    def apply(self, resources: Sequence[Resource], now: datetime) -> list[tuple[Resource, str]]:
        """Create or replace every resource in one transaction.

        Returns each resource with ``created``, ``configured`` or ``unchanged``.
        """
        results: list[tuple[Resource, str]] = []
        with self._tx() as db:
            for resource in resources:
                kind, namespace, name = resource.key
                body = json.dumps(encode_resource(resource), sort_keys=True)
                row = db.execute(
                    "SELECT body, revision FROM resources WHERE kind=? AND namespace=? AND name=?",
                    (kind, namespace, name),
                ).fetchone()
                if row is None:
                    action, revision = "created", 1
                elif row[0] == body:
                    results.append((resource, "unchanged"))
                    continue
                else:
                    action, revision = "configured", row[1] + 1
                db.execute(
                    "INSERT OR REPLACE INTO resources VALUES (?,?,?,?,?,?)",
                    (kind, namespace, name, body, revision, timestamp(now)),
                )
                results.append((resource, action))
        return results

    def delete_resource(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one resource; False if it did not exist."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM resources WHERE kind=? AND namespace=? AND name=?",
                (kind, namespace, name),
            )
            return cur.rowcount > 0

    def resources(self) -> tuple[Resource, ...]:
        """Every stored resource, in (kind, namespace, name) order."""
        rows = self._rows("SELECT body FROM resources ORDER BY kind, namespace, name")
        return tuple(decode_resource(json.loads(row[0])) for row in rows)

    def resource_revisions(self) -> dict[tuple[str, str, str], tuple[int, str]]:
        """(kind, namespace, name) → (revision, updated_at)."""
        rows = self._rows("SELECT kind, namespace, name, revision, updated_at FROM resources")
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}

    # ------------------------------------------------------------------ instances

    def upsert_instance(self, record: InstanceRecord) -> InstanceRecord | None:
        """Store *record*; returns the previous record with that id, if any."""
        with self._tx() as db:
            old = db.execute("SELECT * FROM instances WHERE id=?", (record.id,)).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.id,
                    record.spiffe_id,
                    record.service,
                    record.namespace,
                    record.address,
                    record.port,
                    record.plaintext_port,
                    record.admin_port,
                    json.dumps(dict(record.labels), sort_keys=True),
                    record.mode,
                    timestamp(record.registered_at),
                    timestamp(record.last_seen),
                    timestamp(record.expires_at),
                    record.applied_version,
                    record.rejected_version,
                    record.rejection,
                    record.source,
                ),
            )
        return self._instance(old) if old is not None else None

    @staticmethod
    def _instance(row: Sequence[Any]) -> InstanceRecord:
        return InstanceRecord(
            id=row[0],
            spiffe_id=row[1],
            service=row[2],
            namespace=row[3],
            address=row[4],
            port=row[5],
            plaintext_port=row[6],
            admin_port=row[7],
            labels=tuple(sorted(json.loads(row[8]).items())),
            mode=row[9],
            registered_at=from_timestamp(row[10]),
            last_seen=from_timestamp(row[11]),
            expires_at=from_timestamp(row[12]),
            applied_version=row[13],
            rejected_version=row[14],
            rejection=row[15],
            source=row[16],
        )

    def instance(self, instance_id: str) -> InstanceRecord | None:
        """One instance by id."""
        rows = self._rows("SELECT * FROM instances WHERE id=?", (instance_id,))
        return self._instance(rows[0]) if rows else None

    def instances(self) -> tuple[InstanceRecord, ...]:
        """Every registered instance (expired ones included until :meth:`expire_instances`)."""
        rows = self._rows("SELECT * FROM instances ORDER BY namespace, service, id")
        return tuple(self._instance(row) for row in rows)

    def live_instances(self, now: datetime) -> tuple[InstanceRecord, ...]:
        """Instances whose lease (``expires_at``) has not passed at *now*."""
        return tuple(i for i in self.instances() if i.expires_at >= now)

    def delete_instance(self, instance_id: str) -> bool:
        """Remove one instance; False if unknown."""
        with self._tx() as db:
            return db.execute("DELETE FROM instances WHERE id=?", (instance_id,)).rowcount > 0

    def expire_instances(self, now: datetime) -> int:
        """Remove instances whose registration expired; returns how many."""
        with self._tx() as db:
            return db.execute(
                "DELETE FROM instances WHERE expires_at < ?", (timestamp(now),)
            ).rowcount

    def live_instances_of(self, spiffe_id: str, now: datetime) -> int:
        """How many unexpired registrations *spiffe_id* holds."""
        rows = self._rows(
            "SELECT COUNT(*) FROM instances WHERE spiffe_id=? AND expires_at >= ?",
            (spiffe_id, timestamp(now)),
        )
        return int(rows[0][0])

    # ------------------------------------------------------------------ instance ownership

    def instance_owner(self, instance_id: str) -> str | None:
        """The SPIFFE ID that owns *instance_id*, registered or not; None if unowned."""
        rows = self._rows("SELECT spiffe_id FROM instance_owners WHERE id=?", (instance_id,))
        return str(rows[0][0]) if rows else None

    def claim_instance(self, instance_id: str, spiffe_id: str, now: datetime, *, keep: int) -> str:
        """Make *spiffe_id* the owner of *instance_id* unless another identity owns it.

        Returns the owner after the call: *spiffe_id* when the claim holds, the other owner
        when it does not (and nothing was written). An id stays owned when its lease lapses,
        so no other identity can take it while its agent may still come back. Besides its
        live registrations, an identity keeps at most *keep* ids: beyond that its own least
        recently seen lapsed ids are released, so the table stays bounded per identity (an
        identity can only ever free its own ids).
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT spiffe_id FROM instance_owners WHERE id=?", (instance_id,)
            ).fetchone()
            if row is not None and row[0] != spiffe_id:
                return str(row[0])
            if row is not None:
                db.execute(
                    "UPDATE instance_owners SET last_seen=? WHERE id=?",
                    (timestamp(now), instance_id),
                )
                return spiffe_id
            db.execute(
                "INSERT INTO instance_owners VALUES (?,?,?,?)",
                (instance_id, spiffe_id, timestamp(now), timestamp(now)),
            )
            db.execute(
                "DELETE FROM instance_owners WHERE id IN ("
                " SELECT id FROM instance_owners WHERE spiffe_id=? AND id != ?"
                " AND id NOT IN (SELECT id FROM instances)"
                " ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
                (spiffe_id, instance_id, max(keep - 1, 0)),
            )
            return spiffe_id

    def release_instance(self, instance_id: str) -> bool:
        """Forget who owns *instance_id* (its owner withdrew it); False if unowned."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM instance_owners WHERE id=?", (instance_id,))
            return cur.rowcount > 0

    def owned_instances(self) -> tuple[tuple[str, str], ...]:
        """Every (instance id, owner SPIFFE ID), registered or lapsed."""
        rows = self._rows("SELECT id, spiffe_id FROM instance_owners ORDER BY spiffe_id, id")
        return tuple((str(r[0]), str(r[1])) for r in rows)

    def record_report(self, instance_id: str, version: str, error: str | None) -> bool:
        """Store which snapshot an instance applied or rejected; False if unknown."""
        with self._tx() as db:
            if error is None:
                cur = db.execute(
                    "UPDATE instances SET applied_version=?, rejected_version=NULL, "
                    "rejection=NULL WHERE id=?",
                    (version, instance_id),
                )
            else:
                cur = db.execute(
                    "UPDATE instances SET rejected_version=?, rejection=? WHERE id=?",
                    (version, error, instance_id),
                )
            return cur.rowcount > 0

    # ------------------------------------------------------------------ certificates

    def record_certificate(self, record: CertificateRecord) -> None:
        """Remember an issued certificate (serial, identity, validity)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO certificates VALUES (?,?,?,?,?)",
                (
                    record.serial,
                    record.spiffe_id,
                    timestamp(record.not_before),
                    timestamp(record.not_after),
                    timestamp(record.issued_at),
                ),
            )

    def certificates(self) -> tuple[CertificateRecord, ...]:
        """Every issued certificate, newest first."""
        rows = self._rows("SELECT * FROM certificates ORDER BY issued_at DESC")
        return tuple(
            CertificateRecord(
                r[0], r[1], from_timestamp(r[2]), from_timestamp(r[3]), from_timestamp(r[4])
            )
            for r in rows
        )

    # ------------------------------------------------------------------ tokens

    def add_token(self, record: TokenRecord) -> None:
        """Store a join token's record (its hash, never the secret)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens VALUES (?,?,?,?,?,?)",
                (
                    record.token_id,
                    record.secret_hash,
                    record.spiffe_id,
                    timestamp(record.expires_at),
                    record.uses_left,
                    timestamp(record.created_at),
                ),
            )

    @staticmethod
    def _token(row: Sequence[Any]) -> TokenRecord:
        return TokenRecord(
            token_id=row[0],
            secret_hash=row[1],
            spiffe_id=row[2],
            expires_at=from_timestamp(row[3]),
            uses_left=row[4],
            created_at=from_timestamp(row[5]),
        )

    def token(self, token_id: str) -> TokenRecord | None:
        """One token record by id."""
        rows = self._rows("SELECT * FROM tokens WHERE id=?", (token_id,))
        return self._token(rows[0]) if rows else None

    def tokens(self) -> tuple[TokenRecord, ...]:
        """Every token record."""
        return tuple(self._token(r) for r in self._rows("SELECT * FROM tokens ORDER BY created_at"))

    def consume_token(self, token_id: str) -> bool:
        """Spend one use, atomically; False when none was left."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE id=? AND uses_left > 0",
                (token_id,),
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------------ re-bootstrap

    @staticmethod
    def _rebootstrap(row: Sequence[Any]) -> RebootstrapRecord:
        return RebootstrapRecord(
            credential_id=row[0],
            secret_hash=row[1],
            spiffe_id=row[2],
            instance_id=row[3],
            expires_at=from_timestamp(row[4]),
            created_at=from_timestamp(row[5]),
            spent_at=from_timestamp(row[6]) if row[6] is not None else None,
        )

    def rebootstrap_credential(self, credential_id: str) -> RebootstrapRecord | None:
        """One re-bootstrap credential record by id (its hash, never the secret)."""
        rows = self._rows("SELECT * FROM rebootstrap WHERE id=?", (credential_id,))
        return self._rebootstrap(rows[0]) if rows else None

    def rebootstrap_credentials(self) -> tuple[RebootstrapRecord, ...]:
        """Every stored re-bootstrap credential record, oldest first."""
        rows = self._rows("SELECT * FROM rebootstrap ORDER BY created_at")
        return tuple(self._rebootstrap(r) for r in rows)

    def issue_rebootstrap(
        self, record: RebootstrapRecord, *, spend: str | None, now: datetime
    ) -> bool:
        """Store *record*, replacing its instance's previous one; spend *spend* first.

        All in one transaction: when *spend* names a credential that is already spent
        (or gone), nothing changes and the answer is False.
        """
        with self._tx() as db:
            if spend is not None:
                cur = db.execute(
                    "UPDATE rebootstrap SET spent_at=? WHERE id=? AND spent_at IS NULL",
                    (timestamp(now), spend),
                )
                if cur.rowcount != 1:
                    return False
            db.execute(
                "DELETE FROM rebootstrap WHERE spiffe_id=? AND instance_id=? AND spent_at IS NULL",
                (record.spiffe_id, record.instance_id),
            )
            # Spent records stay until they expire, so a replay is told "already used".
            db.execute("DELETE FROM rebootstrap WHERE expires_at < ?", (timestamp(now),))
            db.execute(
                "INSERT INTO rebootstrap VALUES (?,?,?,?,?,?,NULL)",
                (
                    record.credential_id,
                    record.secret_hash,
                    record.spiffe_id,
                    record.instance_id,
                    timestamp(record.expires_at),
                    timestamp(record.created_at),
                ),
            )
            return True

    def revoke_rebootstrap(self, spiffe_id: str) -> int:
        """Delete every unspent re-bootstrap credential of *spiffe_id*; how many went."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM rebootstrap WHERE spiffe_id=? AND spent_at IS NULL", (spiffe_id,)
            )
            return int(cur.rowcount)

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        """A small named value (for example the control service's settings)."""
        rows = self._rows("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a small named value."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))
