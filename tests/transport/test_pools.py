"""The mesh's connection pools outlive its clients (meshlib.transport.pools).

A real meshed server (meshlib.testing serves it with meshlib.serve and real mTLS) answers
with the caller's source port, so the tests see whether a request came over a kept-alive
connection of an earlier, already closed client.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from meshlib.mesh import Mesh
from meshlib.testing import TestMesh


async def _peer_port(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = str(scope["client"][1]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with TestMesh(services={"echo": _peer_port}) as tm:
        yield tm.mesh("frontend")


def test_sync_clients_made_per_request_share_one_connection(mesh: Mesh) -> None:
    ports = set()
    for _ in range(5):
        with mesh.client() as client:  # a new client every time, closed every time
            response = client.get("http://echo/")
            assert response.status_code == 200
            ports.add(response.text)
    assert len(ports) == 1


def test_async_clients_made_per_request_share_one_connection(mesh: Mesh) -> None:
    async def main() -> set[str]:
        ports = set()
        for _ in range(5):
            async with mesh.async_client() as client:
                response = await client.get("http://echo/")
                assert response.status_code == 200
                ports.add(response.text)
        return ports

    assert len(asyncio.run(main())) == 1


def test_each_event_loop_gets_its_pools_and_closes_them_when_it_ends(mesh: Mesh) -> None:
    """asyncio.run's shutdown closes that loop's connections: nothing left to the GC."""

    async def one_call() -> str:
        async with mesh.async_client() as client:
            return (await client.get("http://echo/")).text

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        first = asyncio.run(one_call())
        second = asyncio.run(one_call())  # a new loop: a new connection
        gc.collect()
    assert first != second


def test_aclose_closes_the_running_loops_pools(mesh: Mesh) -> None:
    async def main() -> tuple[str, str]:
        async with mesh.async_client() as client:
            before = (await client.get("http://echo/")).text
        await mesh._pools.aclose()
        async with mesh.async_client() as client:
            after = (await client.get("http://echo/")).text
        return before, after

    before, after = asyncio.run(main())
    assert before != after  # the pooled connection was closed: the next call opened one
