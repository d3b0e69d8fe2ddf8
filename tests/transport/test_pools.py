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


def test_async_with_starts_and_closes_the_mesh_and_its_loop_pools() -> None:
    """``async with`` a Mesh: start on enter; on exit close it, this loop's pools included."""
    with TestMesh(services={"echo": _peer_port}) as tm:
        mesh = tm.mesh("frontend")
        mesh.close()  # TestMesh starts it; begin from a stopped mesh

        async def main() -> tuple[bool, str, str]:
            async with mesh as entered:
                started = entered is mesh and mesh.started
                async with mesh.async_client() as client:
                    first = (await client.get("http://echo/")).text
            assert not mesh.started
            async with mesh, mesh.async_client() as client:
                second = (await client.get("http://echo/")).text
            return started, first, second

        started, first, second = asyncio.run(main())
    assert started
    assert first != second  # the exit closed the pooled connection: a new one the second time
