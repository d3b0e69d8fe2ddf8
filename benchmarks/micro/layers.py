"""Part 1: the in-process cost of each per-request layer of the mesh transport."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from benchmarks.micro.mesh import LAYER_POLICY, make_engine, sdk_tracer_provider
from benchmarks.micro.settings import PATH, TRUST_DOMAIN, Profile
from benchmarks.micro.timing import time_async, time_sync


def measure_layers(profile: Profile) -> list[dict[str, Any]]:
    """ns per request of each in-process layer of the mesh transport."""
    from opentelemetry import trace

    from meshlib.integrations.httpx_call import HttpCall
    from meshlib.integrations.httpx_mesh import MeshTransport
    from meshlib.resilience.retry import Outcome, build_retrying
    from meshlib.runtime.view import build_view
    from meshlib.telemetry.metrics import MeshTelemetry
    from meshlib.traffic.balancers import LeastRequest, StatsRegistry

    server_id = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/backend"
    engine = make_engine(
        [("10.0.0.1", 8443, "v1"), ("10.0.0.2", 8443, "v1"), ("10.0.0.3", 8443, "v2")],
        LAYER_POLICY,
        server_id,
    )
    service = engine.resolve("backend")
    request = httpx.Request("GET", f"http://backend{PATH}", headers={"accept": "*/*"})
    headers = request.headers
    stats = StatsRegistry()
    view = build_view(engine, None, stats=stats)
    destination = view.resolve("backend")
    assert destination is not None
    runtime = destination.runtime
    plan = service.route("GET", PATH, headers)
    assert plan.name == "api", plan.name
    endpoint = plan.backends[0].endpoints[0]
    authority = endpoint.authority
    balancer = LeastRequest(stats)
    v1 = plan.backends[0].endpoints
    ok = Outcome.from_status(200)
    response = httpx.Response(200, request=request)
    clock = time.monotonic

    rows: list[dict[str, Any]] = []
    empty = time_sync(lambda: None, profile)["median_ns"]

    def add(layer: str, what: str, stats_: dict[str, Any], entry: str) -> None:
        rows.append({"layer": layer, "what": what, "entry_point": entry, **stats_})

    def sync(fn: Callable[[], object]) -> dict[str, Any]:
        return time_sync(fn, profile, overhead=empty)

    add("routing", "resolve host", sync(lambda: engine.resolve("backend")), "PolicyEngine.resolve")
    add(
        "routing",
        "match route (2 routes, 2nd matches)",
        sync(lambda: service.route("GET", PATH, headers)),
        "CompiledService.route",
    )
    add("routing", "runtime lookup", sync(lambda: view.resolve("backend")), "ActiveView.resolve")
    add(
        "call",
        "per-call bookkeeping (deadline, retry safety, fault)",
        sync(lambda: HttpCall(destination, plan, request, clock, None)),
        "httpx_call.HttpCall",
    )
    add(
        "balancer",
        "P2C least-request pick (2 endpoints)",
        sync(lambda: balancer.pick(v1)),
        "LeastRequest.pick",
    )
    add(
        "balancer",
        "choose endpoint (weights, outliers, breakers, pick)",
        sync(lambda: runtime.choose(plan, 0.5, frozenset())),
        "ServiceRuntime.choose",
    )

    def stats_round() -> None:
        s = stats.get(authority)
        s.finish(s.start(), True)

    add("balancer", "endpoint load stats (start + finish)", sync(stats_round), "EndpointStats")
    add(
        "breaker",
        "admission check (closed)",
        sync(lambda: runtime.breakers.allow(authority)),
        "BreakerRegistry.allow",
    )
    add(
        "breaker",
        "record outcome (breaker + outlier detector)",
        sync(lambda: runtime.record(endpoint, ok)),
        "ServiceRuntime.record",
    )

    def admission() -> None:
        runtime.admit()
        runtime.budget.record_request()
        runtime.release()

    add("admission", "pool admission + budget deposit", sync(admission), "ServiceRuntime.admit")

    call_ns = rows[3]["median_ns"]

    def prepare_attempt() -> None:
        call = HttpCall(destination, plan, request, clock, None)
        call.driver.begin()  # picks the endpoint (ServiceRuntime.choose), admits
        call.attempt_request()
        call.driver.close()

    choose_ns = rows[5]["median_ns"]
    add(
        "call",
        "build the attempt (headers copy, deadline header, trace context, request)",
        time_sync(
            prepare_attempt,
            profile,
            overhead=empty + call_ns + choose_ns,  # it calls ServiceRuntime.choose
        ),
        "HttpCall.attempt_request",
    )

    def direct() -> httpx.Response:
        return response

    def retried() -> httpx.Response:
        call = HttpCall(destination, plan, request, clock, None)
        retrying = build_retrying(
            plan.retries,
            budget=runtime.budget,
            should_retry=lambda _result: None,
            deadline=call.driver.deadline,
            async_=False,
        )
        result: httpx.Response = retrying(direct)
        return result

    add(
        "retry",
        "retry wrapper, sync (build tenacity Retrying + one successful try)",
        time_sync(retried, profile, overhead=empty + call_ns),
        "build_retrying(async_=False)",
    )

    async def adirect() -> httpx.Response:
        return response

    async def aretried() -> httpx.Response:
        call = HttpCall(destination, plan, request, clock, None)
        retrying = build_retrying(
            plan.retries,
            budget=runtime.budget,
            should_retry=lambda _result: None,
            deadline=call.driver.deadline,
            async_=True,
        )
        result: httpx.Response = await retrying(adirect)
        return result

    async_empty = time_async(adirect, profile)["median_ns"]
    add(
        "retry",
        "retry wrapper, async (build tenacity AsyncRetrying + one successful try)",
        time_async(aretried, profile, overhead=async_empty + call_ns),
        "build_retrying(async_=True)",
    )

    # Telemetry: the transport's own _start/_finish with and without it.
    sdk = sdk_tracer_provider()
    telemetry_sdk = MeshTelemetry(service="frontend", namespace="default", tracer_provider=sdk)
    telemetry_api = MeshTelemetry(
        service="frontend", namespace="default", tracer_provider=trace.NoOpTracerProvider()
    )
    try:
        transports = {
            name: MeshTransport(
                view=lambda: view,
                tls=lambda: None,
                telemetry=tel,
            )
            for name, tel in (("off", None), ("noop", telemetry_api), ("sdk", telemetry_sdk))
        }

        def start_finish(transport: MeshTransport) -> Callable[[], None]:
            def fn() -> None:
                call = transport._start(request)
                assert call is not None
                transport._finish(call, response, None)

            return fn

        base = sync(start_finish(transports["off"]))
        base_ns = base["median_ns"]
        add(
            "call",
            "transport start + finish, telemetry off (resolve, route, bookkeeping)",
            base,
            "MeshTransport._start/_finish",
        )
        add(
            "telemetry",
            "span (no SDK: API no-op) + metrics record",
            time_sync(start_finish(transports["noop"]), profile, overhead=empty + base_ns),
            "MeshTelemetry, NoOpTracerProvider",
        )
        add(
            "telemetry",
            "span (SDK, batch processor) + metrics record",
            time_sync(start_finish(transports["sdk"]), profile, overhead=empty + base_ns),
            "MeshTelemetry, SDK TracerProvider",
        )

        def metrics_only() -> None:
            telemetry_sdk.http_client_done(
                service="backend.default",
                method="GET",
                status=200,
                error=None,
                duration=0.0004,
                attempts=1,
                flag=None,
                route="api",
                path=PATH,
                trace_id=None,
            )

        add(
            "telemetry",
            "metrics record alone (duration histogram)",
            sync(metrics_only),
            "MeshTelemetry.http_client_done",
        )
        tracer = sdk.get_tracer("meshlib")

        def span_only() -> None:
            tracer.start_span("GET", kind=trace.SpanKind.CLIENT).end()

        add("telemetry", "SDK span alone (start + end)", sync(span_only), "Tracer.start_span")
    finally:
        telemetry_sdk.shutdown()
        telemetry_api.shutdown()
        sdk.shutdown()
    return rows
