"""Client of the control service's workload API (HTTPS + mTLS, JSON)."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from meshlib.errors import ControlPlaneError
from meshlib.transport.checked import AsyncIdentityTransport

__all__ = ["ControlClient", "fetch_bundle_unverified"]

REQUEST_TIMEOUT = 10.0


def _error(response: httpx.Response) -> ControlPlaneError:
    try:
        detail = response.json().get("error", {})
        message = detail.get("message") or response.text
    except ValueError:
        message = response.text
    return ControlPlaneError(
        f"control service answered {response.status_code}: {message}", status=response.status_code
    )


async def fetch_bundle_unverified(url: str) -> dict[str, Any]:
    """Fetch the trust bundle without verifying the server.

    Safe only because the caller then keeps just the root whose fingerprint the join
    token pins, and verifies the control service against that root alone.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with httpx.AsyncClient(verify=ctx, timeout=REQUEST_TIMEOUT) as client:
            response = await client.get(f"{url}/v1/bundle")
    except httpx.HTTPError as exc:
        raise ControlPlaneError(f"control service unreachable at {url}: {exc!r}") from exc
    if response.status_code != 200:
        raise _error(response)
    body: dict[str, Any] = response.json()
    return body


class ControlClient:
    """Calls to one control service, verifying it presents *expected* (its SPIFFE ID).

    Args:
        url: ``https://host:port`` of the control service.
        expected: the control service's SPIFFE ID, ``spiffe://<td>/control``.
        tls: returns the client SSLContext (with this workload's SVID once it has one).
    """

    def __init__(self, url: str, *, expected: str, tls: Any) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(
            transport=AsyncIdentityTransport(expected=expected, tls=tls, max_connections=4),
            base_url=self.url,
            timeout=REQUEST_TIMEOUT,
        )

    async def _call(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        try:
            return await self._client.request(
                method, path, timeout=timeout or REQUEST_TIMEOUT, **kwargs
            )
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"control service unreachable at {self.url}: {exc!r}") from exc

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

    async def watch(
        self, version: str, wait: float, dependencies: tuple[str, ...] | None
    ) -> dict[str, Any] | None:
        """Long-poll for a snapshot newer than *version*; None when nothing changed."""
        params: dict[str, str] = {"version": version, "wait": f"{wait:g}"}
        if dependencies:
            params["deps"] = ",".join(dependencies)
        response = await self._call("GET", "/v1/snapshot", params=params, timeout=wait + 10)
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise _error(response)
        body: dict[str, Any] = response.json()
        return body

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()
