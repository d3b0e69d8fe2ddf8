"""The key sets behind RequestAuthentication ``jwksUri`` rules, fetched by the control service.

Workloads never fetch keys: the control service does, and puts each key set into the
snapshots of the services whose RequestAuthentication names its URI (the builder takes
them from :attr:`MeshState.jwks <meshlib_control.snapshot.builder.MeshState>`), so
Envoy sidecars get them inline too. :class:`JwksCache`:

- fetches a URI as soon as a resource names it, then every ``interval`` seconds
  (``MESH_CONTROL_JWKS_REFRESH``, default 300);
- refreshes a URI at once when a workload reports a token signed with a ``kid`` its key
  set lacks (``POST /v1/jwks/refresh``), at most once per ``min_gap`` seconds per URI;
- bounds every fetch (2 s to connect, 5 s in all, 64 KiB, no redirects, HTTP 200 only)
  and validates the body with :func:`meshlib.policy.jwks.check_jwks`;
- on any failure keeps the keys it already has (a JWKS outage does not stop
  verification with the keys already known) and logs the reason;
- calls ``on_change`` (the plane's snapshot refresh) only when a key set changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable

import httpx

from meshlib.errors import PolicyError
from meshlib.policy.jwks import check_jwks
from meshlib.policy.jwtmodel import MAX_JWKS_BYTES
from meshlib.policy.model import RequestAuthenticationSpec, Resource

__all__ = ["DEFAULT_REFRESH_INTERVAL", "JwksCache", "jwks_uris"]

log = logging.getLogger("meshlib_control")

DEFAULT_REFRESH_INTERVAL = 300.0
REFRESH_ENV = "MESH_CONTROL_JWKS_REFRESH"
FETCH_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
MIN_GAP = 5.0
_TICK = 0.25


def jwks_uris(resources: Iterable[Resource], namespace: str | None = None) -> set[str]:
    """Every ``jwksUri`` the RequestAuthentications (of *namespace*, if given) name."""
    return {
        rule.jwks_uri
        for r in resources
        if isinstance(r.spec, RequestAuthenticationSpec)
        and (namespace is None or r.metadata.namespace == namespace)
        for rule in r.spec.jwt_rules
        if rule.jwks_uri is not None
    }


def _interval_from_env() -> float:
    raw = os.environ.get(REFRESH_ENV)
    if not raw:
        return DEFAULT_REFRESH_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 86400:
        log.error("%s=%r: not 0.1..86400 seconds; using %g", REFRESH_ENV, raw, 300.0)
        return DEFAULT_REFRESH_INTERVAL
    return value


class JwksCache:
    """The fetched key sets, by URI; read by the snapshot builder, refreshed by :meth:`run`."""

    def __init__(
        self,
        *,
        interval: float | None = None,
        min_gap: float = MIN_GAP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = _interval_from_env() if interval is None else interval
        self.min_gap = min(min_gap, self.interval)
        self._clock = clock
        self._keys: dict[str, str] = {}
        self._attempted: dict[str, float] = {}  # uri -> when last fetched (monotonic)
        self._wanted: set[str] = set()  # uris named by the resources
        self._urgent: set[str] = set()  # uris to fetch now (new, or an unknown kid)
        self.errors: dict[str, str] = {}  # uri -> the last fetch's failure

    def key_sets(self) -> tuple[tuple[str, str], ...]:
        """``(uri, canonical key set)`` of every URI still named, sorted by URI."""
        return tuple(sorted((u, k) for u, k in self._keys.items() if u in self._wanted))

    def notice(self, resources: Iterable[Resource]) -> None:
        """Track the URIs *resources* name; a new one is fetched on the next tick."""
        wanted = jwks_uris(resources)
        self._urgent |= wanted - self._wanted - set(self._keys)
        self._wanted = wanted

    def request(self, uri: str) -> bool:
        """A workload met an unknown ``kid`` for *uri*: refresh it now unless one just ran.

        Returns:
            True when a refresh was scheduled; False within ``min_gap`` of the last one.
        """
        last = self._attempted.get(uri)
        if last is not None and self._clock() - last < self.min_gap:
            return False
        self._urgent.add(uri)
        return True

    def is_wanted(self, uri: str) -> bool:
        """True when some RequestAuthentication names *uri*."""
        return uri in self._wanted

    async def fetch(self, client: httpx.AsyncClient, uri: str) -> bool:
        """Fetch *uri* once; True when its key set changed. Failures keep the old keys."""
        self._attempted[uri] = self._clock()
        try:
            async with client.stream("GET", uri) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError(f"more than {MAX_JWKS_BYTES} bytes")
            text = check_jwks(body.decode("utf-8"), "jwks")
        except (httpx.HTTPError, ValueError, PolicyError) as exc:
            self.errors[uri] = str(exc) or type(exc).__name__
            log.warning("jwksUri %s: fetch failed (%s); keeping the keys known", uri, exc)
            return False
        self.errors.pop(uri, None)
        if self._keys.get(uri) == text:
            return False
        self._keys[uri] = text
        log.warning("jwksUri %s: new key set", uri)
        return True

    def _due(self) -> set[str]:
        now = self._clock()
        due = {u for u in self._urgent if u in self._wanted}
        self._urgent.clear()
        for uri in self._wanted:
            last = self._attempted.get(uri)
            if last is None or now - last >= self.interval:
                due.add(uri)
        return due

    async def run(self, on_change: Callable[[], object]) -> None:
        """Fetch what is due, forever; *on_change* after any key set changed."""
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
            while True:
                due = self._due()
                if due:
                    changed = await asyncio.gather(*(self.fetch(client, u) for u in sorted(due)))
                    if any(changed):
                        try:
                            on_change()
                        except Exception:  # the fetcher must survive a bad refresh
                            log.exception("snapshot refresh after a key set change failed")
                await asyncio.sleep(_TICK)
