"""Connection pools that belong to the mesh, not to one httpx client.

A sidecar pools connections for the app whatever the app does; the library must too. So
every ``mesh.client()`` and ``mesh.async_client()`` sends through the mesh's own
:class:`MeshPools`: one identity-checked pool per destination (its SPIFFE ID and pool size),
kept across clients. A handler that opens ``async with mesh.async_client()`` per request
reuses the kept-alive mTLS connections of the one before it instead of paying a new
handshake (``benchmarks.micro``: the per-request-client row beside the shared client).

Sync pools serve every thread (httpcore's sync pool is thread-safe). Async connections
belong to the event loop that opened them, so async pools are kept per loop. A loop's pools
close when the loop ends: a small async generator started on the loop is finalised by
``asyncio.run`` (``loop.shutdown_asyncgens()``) while the loop still runs, and closes them
then. A loop closed without that step leaves its pools to be dropped (and its sockets to
the garbage collector); :meth:`MeshPools.aclose` closes them explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

from meshlib.policy.externalmodel import ExternalServiceSpec
from meshlib.transport.checked import AsyncIdentityTransport, IdentityTransport

__all__ = ["MeshPools"]

PoolKey = tuple[str, int]  # (the destination's SPIFFE ID, its maxConnections)


class _LoopPools:
    """The async pools of one event loop, and the generator that closes them with it."""

    __slots__ = ("guard", "pools")

    def __init__(self) -> None:
        self.pools: dict[PoolKey, AsyncIdentityTransport] = {}
        self.guard: Any = None

    async def aclose(self) -> None:
        pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            with contextlib.suppress(Exception):
                await pool.aclose()


async def _until_loop_ends(pools: _LoopPools) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:  # asyncio.run's shutdown_asyncgens(), on the loop, before it closes
        await pools.aclose()


class MeshPools:
    """The identity-checked connection pools of one mesh workload.

    Args:
        tls: returns the current client SSLContext (read at each new connection, so SVID
            rotations apply without closing the pools).
    """

    def __init__(self, tls: Callable[[], Any]) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._sync: dict[PoolKey, IdentityTransport] = {}
        self._loops: dict[asyncio.AbstractEventLoop, _LoopPools] = {}

    # ------------------------------------------------------------------ sync

    def sync_pool(
        self, key: PoolKey, sni: str | None, external: ExternalServiceSpec | None = None
    ) -> IdentityTransport:
        """The sync pool of the destination *key* (created on first use); *external*: an
        ExternalService's spec (no identity check)."""
        pool = self._sync.get(key)
        if pool is None:
            with self._lock:
                pool = self._sync.get(key)
                if pool is None:
                    pool = self._sync[key] = IdentityTransport(
                        expected=key[0],
                        tls=self._tls,
                        sni=sni,
                        max_connections=key[1],
                        external=external,
                    )
        return pool

    # ------------------------------------------------------------------ async

    def async_pool(self, key: PoolKey) -> AsyncIdentityTransport | None:
        """The running loop's pool of *key*, or None (then :meth:`new_async_pool`)."""
        loop_pools = self._loops.get(asyncio.get_running_loop())
        return loop_pools.pools.get(key) if loop_pools is not None else None

    async def new_async_pool(
        self, key: PoolKey, sni: str | None, external: ExternalServiceSpec | None = None
    ) -> AsyncIdentityTransport:
        """Create (or find) the running loop's pool of *key*."""
        loop = asyncio.get_running_loop()
        loop_pools = self._loops.get(loop)
        if loop_pools is None:
            loop_pools = _LoopPools()
            with self._lock:
                for old in [other for other in self._loops if other.is_closed()]:
                    del self._loops[old]  # ended without shutdown_asyncgens: dropped
                self._loops[loop] = loop_pools
            guard = _until_loop_ends(loop_pools)
            await guard.asend(None)
            loop_pools.guard = guard  # held: a collected generator would close the pools
        pool = loop_pools.pools.get(key)
        if pool is None:
            pool = loop_pools.pools[key] = AsyncIdentityTransport(
                expected=key[0], tls=self._tls, sni=sni, max_connections=key[1], external=external
            )
        return pool

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the sync pools; async pools close with their loops (or :meth:`aclose`)."""
        with self._lock:
            pools, self._sync = list(self._sync.values()), {}
        for pool in pools:
            with contextlib.suppress(Exception):
                pool.close()

    async def aclose(self) -> None:
        """Close the sync pools and the running loop's async pools."""
        self.close()
        loop_pools = self._loops.pop(asyncio.get_running_loop(), None)
        if loop_pools is not None:
            await loop_pools.aclose()
