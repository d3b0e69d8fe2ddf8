"""The etcd store's join tokens and re-bootstrap credentials: spent atomically, once.

A token's use is spent with a transaction that compares the token key's ``mod_revision``
with the one read: when two replicas spend the last use at once, exactly one
transaction holds and the other re-reads a record with no use left. A re-bootstrap
credential is spent in the same transaction that stores its successor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from meshlib_control.ca.rebootstrap import RebootstrapRecord
from meshlib_control.ca.tokens import TokenRecord
from meshlib_control.store.base import StoreUnavailable
from meshlib_control.store.codec import decode, encode
from meshlib_control.store.etcd_client import KV, EtcdClient
from meshlib_control.store.etcd_mirror import Mirror

__all__ = ["TokenOperations"]


class TokenOperations:
    """Token and credential methods of :class:`~meshlib_control.store.etcd.EtcdStore`."""

    _mirror: Mirror
    _client: EtcdClient

    def _write(self, compare: list[dict[str, Any]], ops: list[dict[str, Any]]) -> bool:
        raise NotImplementedError

    def _cas(self, keys: Iterable[str], plan: Callable[[dict[str, KV | None]], Any]) -> Any:
        raise NotImplementedError

    def _key(self, kind: str, name: str) -> str:
        return self._mirror.key(kind, name)

    # ------------------------------------------------------------------ join tokens

    def add_token(self, record: TokenRecord) -> None:
        """Store a join token's record (its hash, never the secret)."""
        key = self._key("token", record.token_id)
        self._write([EtcdClient.unchanged(key, 0)], [EtcdClient.put(key, encode(record))])

    def _fresh(self, kind: str, name: str) -> KV | None:
        """A key from the mirror, or read through etcd when the mirror has not seen it yet.

        A token created on another replica a moment ago must be usable here at once.
        """
        kv = self._mirror.get(kind, name)
        if kv is None and self._mirror.writable:
            with contextlib.suppress(StoreUnavailable):
                kv = self._client.get(self._key(kind, name))
        return kv

    def token(self, token_id: str) -> TokenRecord | None:
        """One token record by id."""
        kv = self._fresh("token", token_id)
        return decode(TokenRecord, kv.value) if kv else None

    def tokens(self) -> tuple[TokenRecord, ...]:
        """Every token record, oldest first."""
        records = [decode(TokenRecord, kv.value) for kv in self._mirror.kind("token").values()]
        return tuple(sorted(records, key=lambda r: r.created_at))

    def consume_token(self, token_id: str) -> bool:
        """Spend one use in a transaction every replica agrees on; False when none was left."""
        key = self._key("token", token_id)

        def plan(current: dict[str, KV | None]) -> tuple[bool, list[Any]]:
            kv = current[key]
            if kv is None:
                return False, []
            record = decode(TokenRecord, kv.value)
            if record.uses_left < 1:
                return False, []
            return True, [EtcdClient.put(key, encode(record.after_use()))]

        spent: bool = self._cas([key], plan)
        return spent

    # ------------------------------------------------------------------ re-bootstrap

    def rebootstrap_credential(self, credential_id: str) -> RebootstrapRecord | None:
        """One re-bootstrap credential record by id."""
        kv = self._fresh("reboot", credential_id)
        return decode(RebootstrapRecord, kv.value) if kv else None

    def rebootstrap_credentials(self) -> tuple[RebootstrapRecord, ...]:
        """Every stored re-bootstrap credential record, oldest first."""
        stored = self._mirror.kind("reboot").values()
        records = [decode(RebootstrapRecord, kv.value) for kv in stored]
        return tuple(sorted(records, key=lambda r: r.created_at))

    def issue_rebootstrap(
        self, record: RebootstrapRecord, *, spend: str | None, now: datetime
    ) -> bool:
        """Store *record*, replacing its instance's unspent one; spend *spend* first, atomically.

        When *spend* names a credential already spent (or gone), nothing changes: False.
        """
        keys = [self._key("reboot", spend)] if spend is not None else []

        def plan(current: dict[str, KV | None]) -> tuple[bool, list[Any]]:
            ops: list[dict[str, Any]] = []
            if spend is not None:
                kv = current[keys[0]]
                spent = decode(RebootstrapRecord, kv.value) if kv else None
                if spent is None or spent.spent_at is not None:
                    return False, []
                ops.append(EtcdClient.put(keys[0], encode(replace(spent, spent_at=now))))
            ops.extend(self._stale_credentials(record, spend, now))
            ops.append(EtcdClient.put(self._key("reboot", record.credential_id), encode(record)))
            return True, ops

        if not keys:
            plan_ok, ops = plan({})
            self._write([], ops)
            return bool(plan_ok)
        issued: bool = self._cas(keys, plan)
        return issued

    def _stale_credentials(
        self, record: RebootstrapRecord, spend: str | None, now: datetime
    ) -> Sequence[dict[str, Any]]:
        """Deletes of the instance's other unspent credentials and of expired ones."""
        ops = []
        for name, kv in self._mirror.kind("reboot").items():
            if name == spend:
                continue
            other = decode(RebootstrapRecord, kv.value)
            same = other.spiffe_id == record.spiffe_id and other.instance_id == record.instance_id
            # Spent records stay until they expire, so a replay is told "already used".
            if (same and other.spent_at is None) or other.expires_at < now:
                ops.append(EtcdClient.delete(self._key("reboot", name)))
        return ops

    def revoke_rebootstrap(self, spiffe_id: str) -> int:
        """Delete every unspent re-bootstrap credential of *spiffe_id*; how many went."""
        names = [
            name
            for name, kv in self._mirror.kind("reboot").items()
            if (r := decode(RebootstrapRecord, kv.value)).spiffe_id == spiffe_id
            and r.spent_at is None
        ]
        self._write([], [EtcdClient.delete(self._key("reboot", n)) for n in names])
        return len(names)
