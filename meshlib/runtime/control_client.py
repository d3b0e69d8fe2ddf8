"""Client of the control service's workload API (HTTPS + mTLS, JSON), with failover.

A workload may be given several control replicas (``MESH_CONTROL_URL=https://a,https://b``).
:class:`ControlClient` sends every call to one of them, the *current* address, and sticks
to it while it answers. When it stops answering — connection refused or reset, a timeout,
or a 5xx — the same call moves at once to the next address in the list, and the failed one
backs off: it is skipped for ``FAILOVER_BASE * 2**(failures-1)`` seconds, capped at
``FAILOVER_MAX``, jittered to 50-100 %. When every address is backing off, a call tries
only the one whose backoff ends first, so a mesh with its whole control plane down costs
one connection attempt per call (the agent's loops pace their calls with their own
backoff). A 4xx is an answer, not a failure: it is returned to the caller on the address
that gave it.

A watch (a long-poll of up to 35 s) follows the client: when another call (a heartbeat)
finds the watched replica silent and moves the client to one that answers, the parked
long-poll is dropped and re-issued there with the same held version, instead of waiting
out its own timeout on a replica that may never answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Sequence
from typing import Any

import httpx

from meshlib.errors import ControlPlaneError, IdentityError
from meshlib.transport.checked import AsyncIdentityTransport

__all__ = [
    "CONNECT_TIMEOUT",
    "FAILOVER_BASE",
    "FAILOVER_MAX",
    "ControlClient",
    "fetch_bundle_unverified",
    "split_urls",
]

log = logging.getLogger("meshlib.agent")

REQUEST_TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0  # a replica that does not accept in 3 s is treated as down
FAILOVER_BASE = 0.5
FAILOVER_MAX = 30.0


def _error(response: httpx.Response) -> ControlPlaneError:
    try:
        detail = response.json().get("error", {})
        message = detail.get("message") or response.text
    except ValueError:
        message = response.text
    return ControlPlaneError(
        f"control service answered {response.status_code}: {message}", status=response.status_code
    )


def split_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """The addresses of *url*: one URL, a comma list, or a sequence (already validated)."""
    texts = [url] if isinstance(url, str) else list(url)
    urls = tuple(p.strip().rstrip("/") for t in texts for p in t.split(",") if p.strip())
    if not urls:
        raise ControlPlaneError("no control service address given")
    return urls


async def fetch_bundle_unverified(url: str) -> dict[str, Any]:
    """Fetch the trust bundle without verifying the server.

    Safe only because the caller then keeps just the root whose fingerprint the join
    token pins, and verifies the control service against that root alone.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT)
        async with httpx.AsyncClient(verify=ctx, timeout=timeout) as client:
            response = await client.get(f"{url}/v1/bundle")
    except httpx.HTTPError as exc:
        raise ControlPlaneError(f"control service unreachable at {url}: {exc!r}") from exc
    if response.status_code != 200:
        raise _error(response)
    body: dict[str, Any] = response.json()
    return body


class ControlClient:
    """Calls to the control service, verifying it presents *expected* (its SPIFFE ID).

    Args:
        url: ``https://host:port`` of the control service, or several (a comma list or a
            sequence) to fail over between, in order of preference.
        expected: the control service's SPIFFE ID, ``spiffe://<td>/control``.
        tls: returns the client SSLContext (with this workload's SVID once it has one).
        failover_base, failover_max: the backoff of an address that stopped answering.
        request_timeout: seconds a call (but a watch) may take on one address.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        expected: str,
        tls: Any,
        failover_base: float = FAILOVER_BASE,
        failover_max: float = FAILOVER_MAX,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.urls = split_urls(url)
        self._timeout = request_timeout
        self._expected = expected
        self._tls = tls
        self._base = failover_base
        self._max = failover_max
        self._clients: list[httpx.AsyncClient | None] = [None] * len(self.urls)
        self._failures = [0] * len(self.urls)
        self._retry_at = [0.0] * len(self.urls)
        self._current = 0
        self._moved: asyncio.Event | None = None  # set (and replaced) when _current changes
        self.failovers = 0  # times the current address changed

    @property
    def url(self) -> str:
        """The address calls go to now."""
        return self.urls[self._current]

    def _client(self, index: int) -> httpx.AsyncClient:
        client = self._clients[index]
        if client is None:
            client = self._clients[index] = httpx.AsyncClient(
                transport=AsyncIdentityTransport(
                    expected=self._expected, tls=self._tls, max_connections=4
                ),
                base_url=self.urls[index],
                timeout=httpx.Timeout(self._timeout, connect=min(CONNECT_TIMEOUT, self._timeout)),
            )
        return client

    def _candidates(self) -> list[int]:
        """Addresses to try, current first, skipping those backing off (all are: the first)."""
        n, now = len(self.urls), time.monotonic()
        ring = [(self._current + k) % n for k in range(n)]
        ready = [i for i in ring if self._retry_at[i] <= now]
        return ready or [min(ring, key=lambda i: self._retry_at[i])]

    def backoff(self, failures: int) -> float:
        """Seconds an address is skipped after *failures* failures in a row (jittered)."""
        delay = min(self._max, self._base * 2.0 ** max(0, failures - 1))
        return float(delay * (0.5 + random.random() / 2))

    def _failed(self, index: int) -> None:
        self._failures[index] += 1
        self._retry_at[index] = time.monotonic() + self.backoff(self._failures[index])

    def _answered(self, index: int) -> None:
        self._failures[index] = 0
        self._retry_at[index] = 0.0
        if index != self._current:
            log.warning(
                "control service at %s stopped answering; now using %s",
                self.urls[self._current],
                self.urls[index],
            )
            self._current = index
            self.failovers += 1
            if self._moved is not None:
                self._moved.set()
                self._moved = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        attempts: list[int] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """*method* *path* on the current address, failing over; *attempts* logs each one.

        A replica that fails the identity check (not ``spiffe://<td>/control``) is passed
        over like one that does not answer; when it was the last one tried, its
        :class:`~meshlib.errors.IdentityError` is raised as is.
        """
        error: ControlPlaneError | IdentityError | None = None
        candidates = self._candidates()
        for index in candidates:
            if attempts is not None:
                attempts.append(index)
            try:
                response = await self._client(index).request(
                    method, path, timeout=timeout or self._timeout, **kwargs
                )
            except httpx.HTTPError as exc:
                self._failed(index)
                error = ControlPlaneError(
                    f"control service unreachable at {self.urls[index]}: {exc!r}"
                )
                continue
            except IdentityError as exc:
                self._failed(index)
                log.warning("control service at %s: %s", self.urls[index], exc)
                error = exc
                continue
            if response.status_code >= 500:
                self._failed(index)
                error = _error(response)
                continue
            self._answered(index)
            return response
        assert error is not None
        if isinstance(error, IdentityError):
            raise error
        if len(self.urls) > 1:
            rest = len(self.urls) - len(candidates)
            tail = f", the other {rest} backing off" if rest else ""
            raise ControlPlaneError(
                f"{error} (no control address answered: tried {len(candidates)} of "
                f"{len(self.urls)}{tail})",
                status=error.status,
            )
        raise error

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._call(method, path, **kwargs)
        if response.status_code >= 300:
            raise _error(response)
        body: dict[str, Any] = response.json() if response.content else {}
        return body

    async def sign(
        self,
        csr_pem: bytes,
        token: str | None = None,
        *,
        rebootstrap: str | None = None,
        instance_id: str | None = None,
    ) -> dict[str, Any]:
        """Ask for an SVID for *csr_pem*.

        The caller proves it may: with a join *token*, with its current SVID (this
        client's mTLS), or with the *rebootstrap* credential of its last sign. The answer
        carries the next re-bootstrap credential, issued to *instance_id*.
        """
        body: dict[str, Any] = {"csr": csr_pem.decode()}
        if token is not None:
            body["token"] = token
        if rebootstrap is not None:
            body["rebootstrap"] = rebootstrap
        if instance_id is not None:
            body["instanceId"] = instance_id
        return await self._json("POST", "/v1/sign", json=body)

    async def register(self, instance_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Register this instance, or refresh its registration (the heartbeat)."""
        return await self._json("PUT", f"/v1/instances/{instance_id}", json=body)

    async def deregister(self, instance_id: str) -> None:
        """Remove this instance from the registry at once."""
        await self._json("DELETE", f"/v1/instances/{instance_id}")

    async def report(self, instance_id: str, version: str, error: str | None) -> None:
        """Say which snapshot version this instance applied, or why it rejected one."""
        await self._json(
            "POST",
            f"/v1/instances/{instance_id}/report",
            json={"version": version, "error": error},
        )

    async def jwks_refresh(self, uri: str, kid: str) -> dict[str, Any]:
        """A token named *kid*, unknown to *uri*'s key set: ask for that set to be refetched."""
        return await self._json("POST", "/v1/jwks/refresh", json={"jwksUri": uri, "kid": kid})

    async def watch(
        self, version: str, wait: float, dependencies: tuple[str, ...] | None
    ) -> dict[str, Any] | None:
        """Long-poll for a snapshot newer than *version*; None when nothing changed."""
        params: dict[str, str] = {"version": version, "wait": f"{wait:g}"}
        if dependencies:
            params["deps"] = ",".join(dependencies)
        while True:
            attempts: list[int] = []
            poll = asyncio.ensure_future(
                self._call(
                    "GET", "/v1/snapshot", params=params, timeout=wait + 10, attempts=attempts
                )
            )
            try:
                stale = await self._until_done_or_stale(poll, attempts)
            except BaseException:  # cancelled (agent stopping, wait_for): end the poll too
                poll.cancel()
                await asyncio.wait([poll])
                raise
            if not stale:
                response = poll.result()
                break
            # Another call moved the client off the replica this poll waits on: follow it.
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise _error(response)
        body: dict[str, Any] = response.json()
        return body

    async def _until_done_or_stale(
        self, poll: asyncio.Future[httpx.Response], attempts: list[int]
    ) -> bool:
        """Wait for *poll*; True once the client moved off the address it is waiting on."""
        while not poll.done():
            if self._moved is None:
                self._moved = asyncio.Event()
            moved: asyncio.Future[Any] = asyncio.ensure_future(self._moved.wait())
            try:
                await asyncio.wait([poll, moved], return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()
            if not poll.done() and attempts and attempts[-1] != self._current:
                return True
        return False

    async def aclose(self) -> None:
        """Close pooled connections."""
        for client in self._clients:
            if client is not None:
                await client.aclose()
