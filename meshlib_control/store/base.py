"""The store interface the control service uses, whichever backend keeps the state.

Two backends implement :class:`Store`: :class:`~meshlib_control.store.sqlite.SQLiteStore`
(one process, ``<data-dir>/mesh.db``, the default) and
:class:`~meshlib_control.store.etcd.EtcdStore` (any number of control replicas on one
etcd v3 cluster). Reads are answered from what the backend holds locally (SQLite's file,
etcd's watched mirror); every write is one transaction, or raises
:class:`StoreUnavailable` when the backend cannot take writes (etcd without quorum), with
nothing written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from meshlib.policy.model import Resource
from meshlib_control.ca.rebootstrap import RebootstrapRecord
from meshlib_control.ca.tokens import TokenRecord
from meshlib_control.errors import ApiError
from meshlib_control.store.records import CertificateRecord, InstanceRecord

__all__ = ["Store", "StoreUnavailable"]


class StoreUnavailable(ApiError):
    """The store refuses writes (for example etcd lost quorum); nothing was written.

    Rendered as HTTP 503 with code ``store-unavailable`` and a message naming the cause;
    reads keep being answered from the replica's cached view.
    """

    def __init__(self, cause: str) -> None:
        super().__init__(
            503,
            "store-unavailable",
            f"the control service's store refuses writes (read-only until it is back): {cause}",
        )


class Store(Protocol):
    """All persistent state of the control service: resources, registry, tokens, reports."""

    #: True when other control replicas share this store (and its instance leases).
    replicated: bool

    # ---- lifecycle and change notices
    def close(self) -> None:
        """Release the backend (connections, watch threads)."""

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call *callback* (from any thread) when another writer changed the mesh state.

        Only changes that can alter a snapshot count: resources, and instances appearing,
        going or changing their endpoint. A single-process backend never calls it.
        """

    # ---- resources
    def apply(self, resources: Sequence[Resource], now: datetime) -> list[tuple[Resource, str]]:
        """Create or replace every resource at once: ``created``/``configured``/``unchanged``."""
        ...

    def delete_resource(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one resource; False if it did not exist."""
        ...

    def resources(self) -> tuple[Resource, ...]:
        """Every stored resource, in (kind, namespace, name) order."""
        ...

    def resource_revisions(self) -> dict[tuple[str, str, str], tuple[int, str]]:
        """(kind, namespace, name) → (revision, updated_at)."""
        ...

    # ---- instances
    def upsert_instance(self, record: InstanceRecord) -> InstanceRecord | None:
        """Store *record* (renewing its lease); returns the previous record with that id."""
        ...

    def instance(self, instance_id: str) -> InstanceRecord | None:
        """One instance by id."""
        ...

    def instances(self) -> tuple[InstanceRecord, ...]:
        """Every registered instance, by (namespace, service, id)."""
        ...

    def live_instances(self, now: datetime) -> tuple[InstanceRecord, ...]:
        """The instances whose lease holds at *now* (what snapshots are built from)."""
        ...

    def delete_instance(self, instance_id: str) -> bool:
        """Remove one instance; False if unknown."""
        ...

    def expire_instances(self, now: datetime) -> int:
        """Remove instances whose registration expired; returns how many."""
        ...

    def live_instances_of(self, spiffe_id: str, now: datetime) -> int:
        """How many unexpired registrations *spiffe_id* holds."""
        ...

    def record_report(self, instance_id: str, version: str, error: str | None) -> bool:
        """Store which snapshot an instance applied or rejected; False if unknown."""
        ...

    # ---- instance ownership
    def instance_owner(self, instance_id: str) -> str | None:
        """The SPIFFE ID that owns *instance_id*; None if unowned."""
        ...

    def claim_instance(self, instance_id: str, spiffe_id: str, now: datetime, *, keep: int) -> str:
        """Own *instance_id* for *spiffe_id* unless another identity does; the owner after."""
        ...

    def release_instance(self, instance_id: str) -> bool:
        """Forget who owns *instance_id*; False if unowned."""
        ...

    def owned_instances(self) -> tuple[tuple[str, str], ...]:
        """Every (instance id, owner SPIFFE ID)."""
        ...

    # ---- certificates, tokens, re-bootstrap credentials
    def record_certificate(self, record: CertificateRecord) -> None:
        """Remember an issued certificate."""

    def certificates(self) -> tuple[CertificateRecord, ...]:
        """Every issued certificate, newest first."""
        ...

    def add_token(self, record: TokenRecord) -> None:
        """Store a join token's record."""

    def token(self, token_id: str) -> TokenRecord | None:
        """One token record by id."""
        ...

    def tokens(self) -> tuple[TokenRecord, ...]:
        """Every token record, oldest first."""
        ...

    def consume_token(self, token_id: str) -> bool:
        """Spend one use atomically (across replicas); False when none was left."""
        ...

    def rebootstrap_credential(self, credential_id: str) -> RebootstrapRecord | None:
        """One re-bootstrap credential record by id."""
        ...

    def rebootstrap_credentials(self) -> tuple[RebootstrapRecord, ...]:
        """Every re-bootstrap credential record, oldest first."""
        ...

    def issue_rebootstrap(
        self, record: RebootstrapRecord, *, spend: str | None, now: datetime
    ) -> bool:
        """Store *record* replacing its instance's unspent one, spending *spend* atomically."""
        ...

    def revoke_rebootstrap(self, spiffe_id: str) -> int:
        """Delete every unspent credential of *spiffe_id*; how many went."""
        ...

    # ---- meta
    def get_meta(self, key: str) -> str | None:
        """A small named value."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Set a small named value."""
