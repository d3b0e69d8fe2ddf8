"""The etcd backend's local view: every key under the store's prefix, kept by a watch.

A replica loads the whole prefix with one linearizable range before it serves (so a
replica restarted with a stale view has caught up before its first watch is answered),
then follows etcd's watch from the next revision on a thread of its own, resuming on
another member from the last revision it saw when one goes away. Reads are answered
from here, so they keep working when etcd loses quorum; a write waits until the watch
has delivered its revision, so a replica reads its own writes.

A second thread polls the members' ``/health``: while no member has a leader, writes are
refused at once (:class:`~meshlib_control.store.base.StoreUnavailable`) instead of each
waiting for etcd's request timeout.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from meshlib_control.errors import ApiError
from meshlib_control.store.base import StoreUnavailable
from meshlib_control.store.etcd_client import KV, EtcdClient

__all__ = ["Mirror"]

log = logging.getLogger("meshlib_control.store")

HEALTH_INTERVAL = 0.5
LOAD_TIMEOUT = 15.0
RESUME_BACKOFF = (0.05, 1.0)  # first and longest pause between watch attempts


class Mirror:
    """Keys under *prefix*, by kind (the first path segment), as of :attr:`revision`.

    *on_change* is called on the watch thread with the (kind, old, new) of every change
    another writer made (old or new None for a create or delete).
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        on_change: Callable[[list[tuple[str, KV | None, KV | None]]], None],
        *,
        load_timeout: float = LOAD_TIMEOUT,
    ) -> None:
        self._client = client
        self._watch_client = client.clone()
        self._health_client = client.clone()
        self.prefix = prefix
        self._on_change = on_change
        self._data: dict[str, dict[str, KV]] = {}
        self.revision = 0
        self._cond = threading.Condition(threading.RLock())
        self._closed = threading.Event()
        self._own: set[int] = set()  # revisions this replica wrote: no change notice
        self.generations: dict[str, int] = {}  # kind → bumps on every change of that kind
        self.writable = True
        self.cause = ""
        self.last_unwritable: float | None = None  # monotonic time the health check last failed
        self._load(load_timeout)
        self._threads = [
            threading.Thread(target=self._watch_loop, name="etcd-watch", daemon=True),
            threading.Thread(target=self._health_loop, name="etcd-health", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ reads

    def kind(self, kind: str) -> dict[str, KV]:
        """A copy of the keys of *kind* (``name`` → KV, the name after ``kind/``)."""
        with self._cond:
            return dict(self._data.get(kind, {}))

    def get(self, kind: str, name: str) -> KV | None:
        """One key of *kind*."""
        with self._cond:
            return self._data.get(kind, {}).get(name)

    def key(self, kind: str, name: str) -> str:
        """The etcd key of *name* in *kind*."""
        return f"{self.prefix}{kind}/{name}"

    def unwritable_within(self, seconds: float) -> bool:
        """True when writes were refused at some point in the last *seconds*."""
        last = self.last_unwritable
        return not self.writable or (last is not None and time.monotonic() - last <= seconds)

    # ------------------------------------------------------------------ writes

    def check_writable(self) -> None:
        """Raise StoreUnavailable while the health check sees no member with a leader."""
        if not self.writable:
            raise StoreUnavailable(self.cause)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Callable[[int], None]]:
        """Hold the watch back while this replica writes; call the yielded with the revision.

        So the watch never delivers this replica's own write before it is known as its own
        (which would send a needless change notice).
        """
        with self._cond:
            yield self._own.add

    def wrote(self, revision: int, timeout: float = 2.0) -> None:
        """This replica wrote *revision*: wait (bounded) until the watch delivered it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.revision < revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("etcd watch is behind revision %d; reads may lag", revision)
                    return
                self._cond.wait(left)

    # ------------------------------------------------------------------ loading and watching

    def _split(self, key: str) -> tuple[str, str]:
        kind, _, name = key[len(self.prefix) :].partition("/")
        return kind, name

    def _load(self, timeout: float = LOAD_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                revision, kvs = self._client.range(self.prefix, prefix=True)
                break
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise ApiError(
                        503,
                        "store-unavailable",
                        f"--store: cannot load the state from etcd within {timeout:g} s: "
                        + exc.message.rpartition("): ")[2],
                    ) from exc
                time.sleep(0.2)
        data: dict[str, dict[str, KV]] = {}
        for kv in kvs:
            kind, name = self._split(kv.key)
            data.setdefault(kind, {})[name] = kv
        with self._cond:
            old = self._data
            self._data = data
            self.revision = revision
            for kind in set(old) | set(data):
                self.generations[kind] = self.generations.get(kind, 0) + 1
            self._cond.notify_all()
        if old:  # a reload after compaction: tell what differs
            changes = [
                (kind, old.get(kind, {}).get(n), data.get(kind, {}).get(n))
                for kind in set(old) | set(data)
                for n in set(old.get(kind, {})) | set(data.get(kind, {}))
                if old.get(kind, {}).get(n) != data.get(kind, {}).get(n)
            ]
            if changes:
                self._on_change(changes)

    def _apply(self, revision: int, events: tuple[tuple[KV, bool], ...]) -> None:
        changes: list[tuple[str, KV | None, KV | None]] = []
        with self._cond:
            for kv, deleted in events:
                kind, name = self._split(kv.key)
                bucket = self._data.setdefault(kind, {})
                old = bucket.get(name)
                if deleted:
                    bucket.pop(name, None)
                    new = None
                else:
                    bucket[name] = new = kv
                self.generations[kind] = self.generations.get(kind, 0) + 1
                if kv.mod_revision not in self._own:
                    changes.append((kind, old, new))
            self._own = {r for r in self._own if r > revision}
            self.revision = max(self.revision, revision)
            self._cond.notify_all()
        if changes:
            self._on_change(changes)

    def _watch_loop(self) -> None:
        pause = RESUME_BACKOFF[0]
        member = 0
        while not self._closed.is_set():
            try:
                for batch in self._watch_client.watch(self.prefix, self.revision + 1, member):
                    if batch.compacted:
                        log.warning("etcd compacted past revision %d: reloading", self.revision)
                        self._load()
                        break
                    self._apply(batch.revision, batch.events)
                    pause = RESUME_BACKOFF[0]
            except (httpx.HTTPError, ValueError, StoreUnavailable) as exc:
                if self._closed.is_set():
                    return
                log.info("etcd watch on %s ended: %s", self._client.endpoints[member], exc)
            except Exception:  # the watch must outlive a bad event
                log.exception("etcd watch failed")
            member = (member + 1) % len(self._client.endpoints)
            self._closed.wait(pause)
            pause = min(pause * 2, RESUME_BACKOFF[1])

    def _health_loop(self) -> None:
        while not self._closed.wait(HEALTH_INTERVAL):
            ok, cause = self._health_client.healthy()
            if not ok:
                self.last_unwritable = time.monotonic()
            if ok != self.writable:
                log.warning("etcd %s", "is back: writes resume" if ok else f"unavailable: {cause}")
            self.writable, self.cause = ok, cause

    def close(self) -> None:
        """Stop the threads and close the connections."""
        self._closed.set()
        self._watch_client.abort_watch()
        self._health_client.close()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._watch_client.close()
