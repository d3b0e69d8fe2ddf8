"""The scraper: every few seconds, each live instance's admin port, over plain HTTP.

For each instance with an ``adminPort`` it keeps the last two parsed ``/metrics`` pages
(golden metrics are their difference) and the last ``/debug/snapshot`` answer (staleness
and ``meshctl explain``). Expired instances are forgotten. A failed scrape is counted and
remembered as that instance's error, never raised: observing the mesh must not break the
control service.

The admin port of a meshlib instance listens on 127.0.0.1 (``meshlib.runtime.admin``); the
scraper uses the instance's registered address, or 127.0.0.1 for client-only instances that
registered none — so a control service sees the admin ports of its own host.

A workload chooses what it registers, so the scraper trusts none of it:

* it GETs only the fixed admin paths (:data:`~meshlib_control.observe.targets.ADMIN_PATHS`),
  never follows a redirect, and only at an admin address that is the instance's own
  (:func:`~meshlib_control.observe.targets.admin_refusal`): the IP
  address the registration came from, or loopback for a registration from loopback — never
  a name (no DNS) and never another host a workload points it at;
* a page is read as a stream and dropped at :attr:`Observer.max_bytes` (``--scrape-max-bytes``),
  the whole fetch is bounded by :attr:`Observer.deadline`, and JSON deeper than
  :data:`MAX_PAGE_DEPTH` or of the wrong shape is a scrape error. Every such problem is an
  error string on the instance (a WARN line in ``meshctl check``), never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import Any

import httpx

from meshlib_control.api.limits import json_depth
from meshlib_control.observe.envoy import parser_for
from meshlib_control.observe.golden import golden_stats
from meshlib_control.observe.instances import InstanceState, PlaneView, expected_versions
from meshlib_control.observe.targets import ADMIN_PATHS, admin_base, admin_refusal
from meshlib_control.store.sqlite import InstanceRecord

__all__ = [
    "ADMIN_PATHS",
    "DEFAULT_DEADLINE",
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "InstanceState",
    "Observer",
    "admin_base",
    "admin_refusal",
    "expected_versions",
    "parser_for",
]

log = logging.getLogger("meshlib_control.observe")

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_DEADLINE = 5.0  # one whole fetch, however slowly the page drips in
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
MAX_PAGE_DEPTH = 64


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} overflows a float")
    return value


class Observer:
    """Scrapes instances of *plane* and answers golden metrics from what it kept."""

    def __init__(
        self,
        plane: PlaneView,
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.plane = plane
        self.interval = interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.deadline = deadline
        self._transport = transport
        self.instances: dict[str, InstanceState] = {}
        self.scraped = 0
        self.failed = 0
        self.without_admin = 0
        self.last_tick: float | None = None
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ HTTP

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.timeout, trust_env=False, transport=self._transport
            )
        return self._http

    async def fetch(self, record: InstanceRecord, path: str) -> bytes:
        """The body of GET *path* on the instance's admin port.

        At most :attr:`max_bytes`, within :attr:`deadline` seconds in all.

        Raises:
            httpx.HTTPError: the request failed or answered an error status.
            ValueError: a path other than the admin pages, an admin address that is not
                the instance's own, a page too large, or the deadline passed.
        """
        if path not in ADMIN_PATHS:
            raise ValueError(f"{path}: not an admin page the observer reads")
        base = admin_base(record)
        if base is None:
            raise ValueError(f"instance {record.id} has no admin port")
        refusal = admin_refusal(record)
        if refusal is not None:
            raise ValueError(refusal)
        try:
            async with asyncio.timeout(self.deadline):
                return await self._read(base + path)
        except TimeoutError:
            raise ValueError(f"no complete answer within {self.deadline:g}s") from None

    async def _read(self, url: str) -> bytes:
        # Raw bytes, uncompressed on the wire: a compressed page could inflate past the cap
        # inside one decoder call.
        headers = {"accept-encoding": "identity"}
        async with self._client().stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ValueError(f"page sent with content-encoding {encoding!r}; not read")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise ValueError(f"page of {declared} bytes, over the {self.max_bytes}-byte cap")
            parts: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.max_bytes:
                    raise ValueError(f"page larger than the {self.max_bytes}-byte cap; dropped")
                parts.append(chunk)
            return b"".join(parts)

    async def fetch_json(self, record: InstanceRecord, path: str) -> dict[str, Any] | str:
        """The JSON object at *path*, or a string saying why not."""
        try:
            raw = await self.fetch(record, path)
            body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
        except RecursionError:
            return f"{path}: JSON nested deeper than {MAX_PAGE_DEPTH} levels"
        except (httpx.HTTPError, ValueError) as exc:
            return f"{path}: {exc or type(exc).__name__}"
        if not isinstance(body, dict):
            return f"{path}: not a JSON object"
        if json_depth(body) > MAX_PAGE_DEPTH:
            return f"{path}: JSON nested deeper than {MAX_PAGE_DEPTH} levels"
        return body

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ scraping

    async def _scrape(self, state: InstanceState) -> bool:
        record = state.record
        try:
            text = (await self.fetch(record, "/metrics")).decode("utf-8", errors="replace")
            scrape = parser_for(record.mode)(text)
        except (httpx.HTTPError, ValueError) as exc:
            state.error = f"/metrics: {exc or type(exc).__name__}"
            return False
        now = time.monotonic()
        state.previous, state.previous_at = state.latest, state.latest_at
        state.latest, state.latest_at = scrape, now
        state.error = None
        snapshot = await self.fetch_json(record, "/debug/snapshot")
        if isinstance(snapshot, dict):
            state.snapshot, state.snapshot_at = snapshot, now
        return True

    async def tick(self) -> None:
        """Scrape every live instance once (concurrently), forget the expired ones."""
        live = {r.id: r for r in self.plane.state().instances}
        for gone in set(self.instances) - set(live):
            del self.instances[gone]
        for record in live.values():
            state = self.instances.get(record.id)
            if state is None:
                self.instances[record.id] = InstanceState(record)
            else:
                state.record = record
        targets = [s for s in self.instances.values() if s.record.admin_port]
        results = await asyncio.gather(*(self._scrape(s) for s in targets), return_exceptions=True)
        for state, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                state.error = f"scrape failed: {result!r}"
                log.warning("scraping %s failed", state.record.id, exc_info=result)
        self.scraped = sum(1 for r in results if r is True)
        self.failed = len(results) - self.scraped
        self.without_admin = len(self.instances) - len(targets)
        self.last_tick = time.monotonic()
        for state in self.instances.values():
            self.staleness(state)

    async def run(self) -> None:
        """Scrape every :attr:`interval` seconds until cancelled."""
        try:
            while True:
                try:
                    await self.tick()
                except Exception:  # a bad tick must not end the scraper
                    log.exception("scrape tick failed")
                await asyncio.sleep(self.interval)
        finally:
            with contextlib.suppress(Exception):
                await self.aclose()

    # ------------------------------------------------------------------ answers

    def staleness(self, state: InstanceState) -> float | None:
        """Seconds the instance has been on a version the control would not send, or None.

        Expected versions: the snapshot built for the instance with ``dependencies=None``,
        and the one built with the services listed in the snapshot it reported at
        ``/debug/snapshot`` (an instance that declared dependencies receives only those).
        Without the instance's own snapshot (no admin port, or it did not answer) there is
        no telling which dependencies it declared, so it is not judged (None). The rule
        misses a dependency the instance declared before that service had any instances.
        """
        reported = state.snapshot.get("snapshot") if state.snapshot is not None else None
        if not isinstance(reported, dict):
            return None  # none reported, or not a snapshot: no telling what it declared
        applied = state.record.applied_version
        if applied is None:
            version = reported.get("version")
            applied = version if isinstance(version, str) else None
        if applied is None:
            return None
        expected = expected_versions(self.plane, state.record, reported)
        now = time.monotonic()
        if applied in expected:
            state.stale_version = state.stale_since = None
            return None
        if state.stale_version != applied or state.stale_since is None:
            state.stale_version, state.stale_since = applied, now
        return now - state.stale_since

    def stats(self, service: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        """Golden metrics per service and edge, optionally of one destination service."""
        windows = [
            w
            for s in self.instances.values()
            if (w := s.window()) is not None
            and (service is None or s.record.service == service)
            and (namespace is None or s.record.namespace == namespace)
        ]
        result = golden_stats(windows)
        result["intervalSeconds"] = self.interval
        result["instances"] = {
            "scraped": self.scraped,
            "failed": self.failed,
            "withoutAdminPort": self.without_admin,
        }
        result["lastScrapeAgoSeconds"] = (
            None if self.last_tick is None else round(time.monotonic() - self.last_tick, 3)
        )
        return result

    def instance_rows(self) -> list[dict[str, Any]]:
        """Live instances for the dashboard: registry fields plus what scraping learned."""
        now = time.monotonic()
        rows = []
        for record in self.plane.state().instances:
            row = record.to_json()
            state = self.instances.get(record.id)
            expiry = state.certificate_expiry(now) if state is not None else None
            row["certificateExpiresInSeconds"] = None if expiry is None else round(expiry)
            row["scrapeError"] = state.error if state is not None else None
            row["versionLabel"] = dict(record.labels).get("version")
            stale = state.stale_since if state is not None else None
            row["staleForSeconds"] = None if stale is None else round(now - stale)
            rows.append(row)
        return rows
