"""Part 3: the whole client path against a local uvicorn server, and its profile."""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from benchmarks.micro.backend import Backend
from benchmarks.micro.identities import Identities
from benchmarks.micro.mesh import make_engine, sdk_tracer_provider
from benchmarks.micro.settings import PATH, Profile
from benchmarks.micro.timing import lat_us


def _path_clients(
    backend: Backend, ids: Identities, telemetry_sdk: Any
) -> dict[str, tuple[str, Callable[[], Any], bool]]:
    """name → (url, client factory, is_async)."""
    from meshlib.integrations.httpx_mesh import AsyncMeshTransport, MeshTransport
    from meshlib.runtime.view import standalone_view
    from meshlib.traffic.balancers import StatsRegistry
    from meshlib.transport.pools import MeshPools

    server_id = str(ids.server.spiffe_id)
    engine = make_engine([("127.0.0.1", backend.http_tls, "v1")], None, server_id)
    ctx = ids.client_context
    plain_url = f"http://127.0.0.1:{backend.http_plain}{PATH}"
    tls_url = f"https://127.0.0.1:{backend.http_tls}{PATH}"
    mesh_url = f"http://backend{PATH}"

    shared_view = standalone_view(engine, stats=StatsRegistry())  # one view for the pair
    shared = MeshPools(lambda: ctx)  # what a Mesh holds: pools every client of it shares

    def mesh(is_async: bool, telemetry: Any, pools: MeshPools | None = None) -> Callable[[], Any]:
        def make() -> Any:
            kwargs: dict[str, Any] = {
                "view": shared_view
                if pools is not None
                else standalone_view(engine, stats=StatsRegistry()),
                "tls": lambda: ctx,
                "telemetry": telemetry,
                "pools": pools,
            }
            if is_async:
                return httpx.AsyncClient(transport=AsyncMeshTransport(**kwargs))
            return httpx.Client(transport=MeshTransport(**kwargs))

        return make

    return {
        "httpx plaintext (floor)": (plain_url, httpx.Client, False),
        "httpx hand-wired mTLS": (tls_url, lambda: httpx.Client(verify=ctx), False),
        "meshlib sync, telemetry off": (mesh_url, mesh(False, None), False),
        "meshlib sync, telemetry on": (mesh_url, mesh(False, telemetry_sdk), False),
        "httpx async plaintext": (plain_url, httpx.AsyncClient, True),
        "httpx async hand-wired mTLS": (tls_url, lambda: httpx.AsyncClient(verify=ctx), True),
        "meshlib async, telemetry off": (mesh_url, mesh(True, None), True),
        "meshlib async, telemetry on": (mesh_url, mesh(True, telemetry_sdk), True),
        # The mesh's shared pools: one client for the series, or a new client per request.
        "meshlib async, shared client": (mesh_url, mesh(True, None, shared), True),
        "meshlib async, client per request": (mesh_url, mesh(True, None, shared), True),
    }


def _sync_series(url: str, make: Callable[[], Any], profile: Profile) -> list[float]:
    out: list[float] = []
    with make() as client:
        for _ in range(profile.warmup):
            client.get(url).raise_for_status()
        deadline = time.perf_counter() + profile.item_time_cap * 2
        for _ in range(profile.path_requests):
            start = time.perf_counter_ns()
            response = client.get(url)
            out.append(time.perf_counter_ns() - start)
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code}")
            if time.perf_counter() > deadline:
                break
    return out


PER_REQUEST = "meshlib async, client per request"


def _async_series(
    url: str, make: Callable[[], Any], profile: Profile, per_request: bool = False
) -> list[float]:
    """Timed GETs on one client, or (*per_request*) each on a client opened and closed
    around it (the pattern ``async with mesh.async_client()`` inside a handler)."""

    async def body() -> list[float]:
        out: list[float] = []
        async with make() as shared:
            for _ in range(profile.warmup):
                (await shared.get(url)).raise_for_status()
            deadline = time.perf_counter() + profile.item_time_cap * 2
            for _ in range(profile.path_requests):
                start = time.perf_counter_ns()
                if per_request:
                    async with make() as client:
                        response = await client.get(url)
                else:
                    response = await shared.get(url)
                out.append(time.perf_counter_ns() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code}")
                if time.perf_counter() > deadline:
                    break
        return out

    return asyncio.run(body())


def measure_path(profile: Profile, backend: Backend, ids: Identities) -> dict[str, Any]:
    """Sequential keep-alive GETs: per-request latency of each client, interleaved repeats."""
    from meshlib.telemetry.metrics import MeshTelemetry

    sdk = sdk_tracer_provider()
    telemetry = MeshTelemetry(service="frontend", namespace="default", tracer_provider=sdk)
    try:
        clients = _path_clients(backend, ids, telemetry)
        samples: dict[str, list[float]] = {name: [] for name in clients}
        means: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(profile.path_repeats):  # interleaved, so drift hits every series
            for name, (url, make, is_async) in clients.items():
                if is_async:
                    series = _async_series(url, make, profile, name == PER_REQUEST)
                else:
                    series = _sync_series(url, make, profile)
                samples[name].extend(series)
                means[name].append(statistics.fmean(series))
        rows: list[dict[str, Any]] = []
        for name in clients:
            lat = lat_us(samples[name])
            spread = [m / 1000 for m in means[name]]
            rows.append(
                {
                    "client": name,
                    **lat,
                    "repeat_means_us": [round(x, 1) for x in spread],
                }
            )
        by = {r["client"]: r for r in rows}
        for r in rows:
            floor = "httpx async plaintext" if "async" in r["client"] else "httpx plaintext (floor)"
            mtls = (
                "httpx async hand-wired mTLS" if "async" in r["client"] else "httpx hand-wired mTLS"
            )
            r["over_plaintext_p50_us"] = round(r["p50_us"] - by[floor]["p50_us"], 1)
            r["over_mtls_p50_us"] = round(r["p50_us"] - by[mtls]["p50_us"], 1)
            r["over_mtls_p99_us"] = round(r["p99_us"] - by[mtls]["p99_us"], 1)
        profile_split = _profile_mesh_path(profile, clients["meshlib sync, telemetry on"])
        return {
            "requests_per_series": profile.path_requests,
            "rows": rows,
            "profile": profile_split,
        }
    finally:
        telemetry.shutdown()
        sdk.shutdown()


PACKAGES = (
    ("meshlib", ("meshlib/",)),
    ("opentelemetry", ("opentelemetry/",)),
    ("tenacity", ("tenacity/",)),
    ("httpx", ("httpx/",)),
    ("httpcore", ("httpcore/",)),
    ("h11", ("h11/",)),
)


def _package_of(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (ssl, socket, select, …)"
    for name, markers in PACKAGES:
        if any(m in filename for m in markers):
            return name
    return "other Python"


def _profile_mesh_path(
    profile: Profile, client: tuple[str, Callable[[], Any], bool]
) -> dict[str, Any]:
    """cProfile the sync mesh path (telemetry on); self time by package, top functions."""
    url, make, _ = client
    profiler = cProfile.Profile()
    with make() as http:
        for _ in range(profile.warmup):
            http.get(url)
        profiler.enable()
        for _ in range(profile.profile_requests):
            http.get(url)
        profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_package: dict[str, float] = {}
    functions: list[tuple[float, float, str]] = []
    total = 0.0
    for (filename, line, name), (_cc, _nc, tottime, cumtime, _callers) in raw.items():
        package = _package_of(filename)
        by_package[package] = by_package.get(package, 0.0) + tottime
        total += tottime
        if package == "meshlib":
            short = filename.split("meshlib/", 1)[-1]
            functions.append((cumtime, tottime, f"meshlib/{short}:{line} {name}"))
    functions.sort(reverse=True)
    n = profile.profile_requests
    return {
        "requests": n,
        "note": "self time under cProfile, which inflates many small calls; shares, not µs",
        "self_time_share": {
            k: round(v / total, 3) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "top_meshlib_cumulative_us_per_request": [
            {
                "function": f,
                "cumulative_us": round(c / n * 1e6, 1),
                "self_us": round(t / n * 1e6, 1),
            }
            for c, t, f in functions[:12]
        ],
    }
