"""The agent's loops (watch, heartbeat, renew, unknown JWT keys) and what they install.

Split from :mod:`meshlib.runtime.agent`, which keeps the thread, the boot sequence and the
identity bootstrap; :class:`AgentLoops` is the half of :class:`~meshlib.runtime.agent.Agent`
that runs once the workload has an identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meshlib.config import MeshConfig
from meshlib.errors import ControlPlaneError, IdentityError, PolicyError
from meshlib.identity.keys import build_csr, generate_private_key
from meshlib.identity.svid import SVID
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import decode_snapshot
from meshlib.runtime.cache import WorkloadCache
from meshlib.runtime.control_client import ControlClient
from meshlib.runtime.renewal import is_refusal, is_unusable, renewal_backoff

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["AgentLoops"]

log = logging.getLogger("meshlib.agent")

UNKNOWN_KEYS_INTERVAL = 0.5
"""How often unknown JWT key ids are passed on to the control service (when there are any)."""
BACKOFF_BASE = 0.2
BACKOFF_MAX = 5.0


def backoff(attempt: int) -> float:
    """Jittered exponential backoff for the watch loop, capped at BACKOFF_MAX seconds."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2.0**attempt) * (0.5 + random.random() / 2))


class AgentLoops:
    """Watch, heartbeat and renewal; state and identity handling come from the Agent."""

    config: MeshConfig
    mode: str
    instance_id: str
    cache: WorkloadCache
    svid: SVID | None
    engine: PolicyEngine | None
    last_error: str | None
    ready: threading.Event
    admin_port: int | None
    _on_engine: Callable[[PolicyEngine], None]
    _unknown_keys: Callable[[], list[tuple[str, str]]] | None
    _endpoint: dict[str, Any] | None
    _stop: asyncio.Event | None
    _wake_heartbeat: asyncio.Event | None
    _client: ControlClient | None
    _svid_received_at: datetime
    _renewal_error: str | None
    # Snapshots the watch received (200 answers), and how many of them carried the very
    # version the request said it held (a needless re-push; the control service answers
    # 304 for those, so this stays 0 — the failover tests assert it).
    snapshots_received: int = 0
    duplicate_snapshots: int = 0

    if TYPE_CHECKING:

        async def _rejoin(self, svid: SVID) -> None: ...

        def _accept(self, answer: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> None: ...

    def _install_snapshot_dict(self, body: dict[str, Any] | None, *, snapshot: Any = None) -> str:
        """Decode, compile and publish; raises PolicyError (nothing changes) if invalid."""
        if snapshot is None:
            snapshot = decode_snapshot(body or {})
        engine = PolicyEngine.compile(snapshot)
        self.engine = engine
        self._on_engine(engine)
        if body is not None:
            self.cache.save_snapshot(snapshot)
        if self.svid is not None:
            self.ready.set()
        return str(snapshot.version)

    async def _watch_once(self, version: str, timeout: float, *, wait: float) -> str:
        assert self._client is not None
        body = await asyncio.wait_for(
            self._client.watch(version, wait, self.config.dependencies), timeout
        )
        if body is None:
            return version
        self.snapshots_received += 1
        if version and str(body.get("version")) == version:
            self.duplicate_snapshots += 1
        try:
            applied = self._install_snapshot_dict(body)
        except PolicyError as exc:
            rejected = str(body.get("version", "?"))
            log.error("rejected snapshot %s: %s", rejected, exc)
            self.last_error = f"rejected snapshot {rejected}: {exc}"
            await self._report(rejected, str(exc))
            # Do not spin on the same bad version: wait for the next one.
            return rejected
        await self._report(applied, None)
        return applied

    async def _report(self, version: str, error: str | None) -> None:
        assert self._client is not None
        try:
            await self._client.report(self.instance_id, version, error)
        except (ControlPlaneError, IdentityError) as exc:  # best effort; the heartbeat repeats it
            self.last_error = f"report failed: {exc}"

    # ------------------------------------------------------------------ loops

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _watch_loop(self) -> None:
        version = self.engine.version if self.engine is not None else ""
        attempt = 0
        while not self._stopping():
            try:
                version = await self._watch_once(
                    version, self.config.watch_wait + 15, wait=self.config.watch_wait
                )
                attempt = 0
            except (ControlPlaneError, IdentityError, TimeoutError) as exc:
                # IdentityError: a replica that is not the control service; keep trying.
                self.last_error = self._describe(exc)
                await self._sleep(backoff(attempt))
                attempt += 1

    def _describe(self, exc: Exception) -> str:
        """*exc*, prefixed with the real cause when the SVID has expired."""
        svid = self.svid
        if svid is not None and is_unusable(svid, datetime.now(UTC)):
            if self._renewal_error is not None:
                return self._renewal_error  # the renew loop knows more than "unreachable"
            return (
                f"SVID expired at {svid.not_after.isoformat()} (rejoining with the "
                f"re-bootstrap credential): {exc}"
            )
        return str(exc) or repr(exc)

    def _registration(self) -> dict[str, Any]:
        endpoint = self._endpoint or {}
        return {
            "address": endpoint.get("address", ""),
            "port": endpoint.get("port", 0),
            "plaintextPort": endpoint.get("plaintextPort"),
            "adminPort": self.admin_port,
            "labels": dict(self.config.labels),
            "mode": self.mode,
            "appliedVersion": self.engine.version if self.engine is not None else None,
        }

    async def _heartbeat_loop(self) -> None:
        assert self._client is not None and self._wake_heartbeat is not None
        while not self._stopping():
            self._wake_heartbeat.clear()
            interval = self.config.heartbeat_interval
            try:
                answer = await self._client.register(self.instance_id, self._registration())
                ttl = answer.get("ttlSeconds")
                if isinstance(ttl, int | float) and ttl > 0:
                    # Three heartbeats per lease, so one lost beat never expires a live instance.
                    interval = min(interval, ttl / 3)
            except (ControlPlaneError, IdentityError) as exc:
                self.last_error = self._describe(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_heartbeat.wait(), interval)

    async def _unknown_keys_loop(self) -> None:
        """Ask the control service to refresh a jwksUri whose key set lacked a token's kid.

        The admission only records such kids (it does no I/O); the control service fetches
        at most once per few seconds per URI, whatever this sends.
        """
        assert self._client is not None and self._unknown_keys is not None
        while not self._stopping():
            for uri, kid in self._unknown_keys()[:8]:
                try:
                    await self._client.jwks_refresh(uri, kid)
                except ControlPlaneError as exc:  # best effort: the interval refresh remains
                    log.info("jwks refresh request for %s failed: %s", uri, exc)
            await self._sleep(UNKNOWN_KEYS_INTERVAL)

    def renew_delay(self) -> float:
        """Seconds until renewal: half of the remaining lifetime, ±10 % jitter."""
        assert self.svid is not None
        remaining = (self.svid.not_after - self._svid_received_at).total_seconds()
        elapsed = (datetime.now(UTC) - self._svid_received_at).total_seconds()
        due = remaining * (0.5 + random.uniform(-0.1, 0.1))
        return max(0.5, due - elapsed)

    async def _renew_loop(self) -> None:
        assert self._client is not None
        attempt, refused = 0, False
        while not self._stopping():
            delay = (
                self.renew_delay() if attempt == 0 else renewal_backoff(attempt, refused=refused)
            )
            await self._sleep(delay)
            if self._stopping():
                return
            try:
                await self._renew_once()
                attempt, refused = 0, False
                self._renewal_error = None
            except (ControlPlaneError, IdentityError) as exc:
                refused = isinstance(exc, ControlPlaneError) and is_refusal(exc)
                self.last_error = self._renewal_error = f"renewal failed: {exc}"
                log.warning("SVID renewal failed, retrying: %s", exc)
                attempt += 1

    async def _renew_once(self) -> None:
        """Renew over mTLS while the SVID is valid; rejoin without it once it is not."""
        assert self._client is not None and self.svid is not None
        svid = self.svid
        if is_unusable(svid, datetime.now(UTC)):
            await self._rejoin(svid)
            return
        key = generate_private_key()
        answer = await self._client.sign(
            build_csr(key, svid.spiffe_id), instance_id=self.instance_id
        )
        self._accept(answer, key)
