"""The watch cache: one snapshot per watching workload, woken only when its version moves.

In the shape of go-control-plane's snapshot cache: versions are opaque and compared for
equality; a state change rebuilds the snapshots of current watchers and sets the events of
only those whose version differs.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from meshlib.policy.snapshot import Snapshot, encode_snapshot
from meshlib_control.snapshot.builder import MeshState, build_snapshot

__all__ = ["SnapshotCache", "WatchKey", "render"]

IDLE_EVICT_SECONDS = 300.0


def render(snapshot: Snapshot) -> bytes:
    """The snapshot's JSON body (what FastAPI's JSONResponse would write for its encoding)."""
    return json.dumps(
        encode_snapshot(snapshot), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()


WatchKey = tuple[str, str, tuple[str, ...] | None]  # service, namespace, dependencies


@dataclass(slots=True)
class _Entry:
    snapshot: Snapshot
    body: bytes | None = None  # the snapshot's JSON, rendered once for all its watchers
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: int = 0
    last_used: float = field(default_factory=time.monotonic)


class SnapshotCache:
    """Scoped snapshots keyed by caller, with long-poll watches."""

    def __init__(self, state: MeshState) -> None:
        self._state = state
        self._entries: dict[WatchKey, _Entry] = {}
        self._released = False  # shutting down: no watch waits any more

    @property
    def state(self) -> MeshState:
        """The state snapshots are currently built from."""
        return self._state

    def _build(self, key: WatchKey) -> Snapshot:
        service, namespace, deps = key
        return build_snapshot(self._state, service=service, namespace=namespace, dependencies=deps)

    def get(self, key: WatchKey) -> Snapshot:
        """The current snapshot for *key* (built on first use)."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(self._build(key))
        entry.last_used = time.monotonic()
        return entry.snapshot

    def keys_of(self, service: str, namespace: str) -> set[WatchKey]:
        """The watch keys of one identity that the cache holds (idle ones not yet evicted)."""
        now = time.monotonic()
        return {
            key
            for key, entry in self._entries.items()
            if key[0] == service
            and key[1] == namespace
            and (entry.watchers > 0 or now - entry.last_used <= IDLE_EVICT_SECONDS)
        }

    def set_state(self, state: MeshState) -> int:
        """Install new state; wake the watches whose snapshot changed. Returns how many."""
        self._state = state
        now = time.monotonic()
        woken = 0
        for key, entry in list(self._entries.items()):
            if entry.watchers == 0 and now - entry.last_used > IDLE_EVICT_SECONDS:
                del self._entries[key]
                continue
            snapshot = self._build(key)
            if snapshot.version != entry.snapshot.version:
                entry.snapshot = snapshot
                entry.body = None
                entry.changed.set()
                entry.changed = asyncio.Event()
                woken += 1
        return woken

    def body(self, key: WatchKey, snapshot: Snapshot) -> bytes:
        """*snapshot* (the current one for *key*) as the watch API's JSON body.

        Rendered once per version and shared by every watcher of *key*: with many watchers,
        encoding each response anew would cost the control service more than the watch.
        """
        entry = self._entries.get(key)
        if entry is None or entry.snapshot is not snapshot:
            return render(snapshot)
        if entry.body is None:
            entry.body = render(snapshot)
        return entry.body

    def release_all(self) -> None:
        """Answer every pending watch now (with "unchanged"): the service is shutting down.

        Watches that arrive afterwards (a client re-polling on its kept-alive connection
        while the listener drains) answer at once too, so none outlives the graceful
        shutdown and gets cancelled.
        """
        self._released = True
        for entry in self._entries.values():
            entry.changed.set()
            entry.changed = asyncio.Event()

    async def watch(self, key: WatchKey, known: str, timeout: float) -> Snapshot | None:
        """Return the snapshot once its version differs from *known*; None on timeout."""
        snapshot = self.get(key)
        if snapshot.version != known:
            return snapshot
        if self._released:
            return None
        entry = self._entries[key]
        entry.watchers += 1
        try:
            await asyncio.wait_for(entry.changed.wait(), timeout)
        except TimeoutError:
            return None
        finally:
            entry.watchers -= 1
            entry.last_used = time.monotonic()
        snapshot = self.get(key)
        return snapshot if snapshot.version != known else None
