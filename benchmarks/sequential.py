"""Sequential keep-alive httpx callers: each request after the last, over one connection.

The via-frontend caller (:func:`sequential`) is one ``httpx.Client``. The one-hop probe
(:func:`one_hop`), the issue's method, goes straight through the hop under test with two
callers side by side: an ``httpx.Client`` and an ``httpx.AsyncClient`` (on an event loop
of its own in this thread), each on its one kept-alive connection, run in interleaved
rounds (sync, async, sync, async, …) so that drift of the machine hits both alike. For a
meshed mode both callers belong to one :class:`meshlib.Mesh` (``mesh.client()`` and
``mesh.async_client()``); for direct mTLS both carry the same hand-wired client context.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from benchmarks.sampling import percentiles

__all__ = ["FLAVOURS", "one_hop", "sequential"]

FLAVOURS = ("sync", "async")
TIMEOUT = 10.0
MESH_START_TIMEOUT = 30.0


@contextlib.contextmanager
def _client_factories(
    host: str | None, tls_dir: str | None, mesh: dict[str, Any] | None
) -> Iterator[tuple[Callable[[], httpx.Client], Callable[[], httpx.AsyncClient]]]:
    """(sync, async) client factories of one caller; a meshed caller's Mesh lives as long."""
    if mesh is not None:
        import meshlib

        provider = None
        if mesh.get("traced"):
            from benchmarks.apps.common import make_tracer_provider

            provider = make_tracer_provider()[0]
        joined = meshlib.Mesh(
            service=mesh["service"],
            control_url=mesh["control_url"],
            token=mesh["token"],
            data_dir=mesh["data_dir"],
            admin_port=None,
            tracer_provider=provider,
        ).start(MESH_START_TIMEOUT)
        try:
            yield (
                lambda: joined.client(timeout=TIMEOUT),
                lambda: joined.async_client(timeout=TIMEOUT),
            )
        finally:
            joined.close()
    elif tls_dir is not None:
        import ssl

        context = ssl.create_default_context(cafile=f"{tls_dir}/ca.pem")
        context.load_cert_chain(f"{tls_dir}/client.pem", f"{tls_dir}/client-key.pem")
        yield (
            lambda: httpx.Client(timeout=TIMEOUT, verify=context),
            lambda: httpx.AsyncClient(timeout=TIMEOUT, verify=context),
        )
    else:
        headers = {"Host": host} if host else None
        yield (
            lambda: httpx.Client(timeout=TIMEOUT, headers=headers),
            lambda: httpx.AsyncClient(timeout=TIMEOUT, headers=headers),
        )


def _sync_calls(client: httpx.Client, url: str, count: int) -> tuple[list[int], int]:
    latencies: list[int] = []
    errors = 0
    for _ in range(count):
        start = time.perf_counter_ns()
        try:
            ok = client.get(url).status_code == 200
        except Exception:  # counted: a failed call is an error, not a crash
            ok = False
        latencies.append(time.perf_counter_ns() - start)
        errors += 0 if ok else 1
    return latencies, errors


async def _async_calls(client: httpx.AsyncClient, url: str, count: int) -> tuple[list[int], int]:
    latencies: list[int] = []
    errors = 0
    for _ in range(count):
        start = time.perf_counter_ns()
        try:
            ok = (await client.get(url)).status_code == 200
        except Exception:  # counted: a failed call is an error, not a crash
            ok = False
        latencies.append(time.perf_counter_ns() - start)
        errors += 0 if ok else 1
    return latencies, errors


def _round_sizes(requests: int, rounds: int) -> list[int]:
    """*requests* split over *rounds* (at least one), as evenly as whole numbers go."""
    rounds = max(1, min(rounds, requests))
    return [requests // rounds + (1 if i < requests % rounds else 0) for i in range(rounds)]


def one_hop(
    url: str,
    *,
    requests: int,
    warmup: int = 100,
    rounds: int = 1,
    flavours: Sequence[str] = FLAVOURS,
    host: str | None = None,
    tls_dir: str | None = None,
    mesh: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Sequential keep-alive GETs of *url* by each flavour's caller, interleaved in rounds.

    Args:
        url: what to call.
        requests: measured requests per flavour (after *warmup* unmeasured ones each).
        warmup: requests each caller sends first, not recorded.
        rounds: how many alternating slices the measured requests are cut into.
        flavours: ``sync`` (``httpx.Client``) and/or ``async`` (``httpx.AsyncClient``).
        host: the ``Host`` header (a sidecar's outbound port routes on it).
        tls_dir: mode (b)'s certificates: a hand-wired mTLS client.
        mesh: ``service``, ``control_url``, ``token``, ``data_dir``, ``traced``: a meshed
            workload calling through ``mesh.client()`` and ``mesh.async_client()``.

    Returns:
        Per flavour: ``completed``, ``errors``, ``latency_us`` (percentiles over every
        measured request) and ``round_means_us``.
    """
    unknown = set(flavours) - set(FLAVOURS)
    if unknown:
        raise ValueError(f"unknown caller flavours {sorted(unknown)}")
    latencies: dict[str, list[int]] = {f: [] for f in flavours}
    errors = dict.fromkeys(flavours, 0)
    means: dict[str, list[float]] = {f: [] for f in flavours}
    with (
        _client_factories(host, tls_dir, mesh) as (make_sync, make_async),
        asyncio.Runner() as runner,
    ):
        sync_client = make_sync() if "sync" in flavours else None
        async_client = make_async() if "async" in flavours else None
        try:

            def calls(flavour: str, count: int) -> tuple[list[int], int]:
                if flavour == "sync":
                    assert sync_client is not None
                    return _sync_calls(sync_client, url, count)
                assert async_client is not None
                return runner.run(_async_calls(async_client, url, count))

            for flavour in flavours:
                calls(flavour, warmup)
            for size in _round_sizes(requests, rounds):
                for flavour in flavours:
                    got, failed = calls(flavour, size)
                    latencies[flavour] += got
                    errors[flavour] += failed
                    means[flavour].append(statistics.fmean(got) / 1000.0 if got else 0.0)
        finally:
            if sync_client is not None:
                sync_client.close()
            if async_client is not None:
                runner.run(async_client.aclose())
    return {
        flavour: {
            "kind": "sequential",
            "flavour": flavour,
            "completed": len(latencies[flavour]),
            "errors": errors[flavour],
            "latency_us": percentiles(latencies[flavour]),
            "round_means_us": [round(m, 1) for m in means[flavour]],
        }
        for flavour in flavours
    }


def sequential(
    url: str,
    *,
    requests: int,
    warmup: int = 100,
    host: str | None = None,
    tls_dir: str | None = None,
    mesh: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``httpx.Client`` over one keep-alive connection, each request after the last.

    *host*, *tls_dir* and *mesh* as for :func:`one_hop`.
    """
    result = one_hop(
        url, requests=requests, warmup=warmup, flavours=("sync",),
        host=host, tls_dir=tls_dir, mesh=mesh,
    )["sync"]  # fmt: skip
    return {k: result[k] for k in ("kind", "completed", "errors", "latency_us")}
