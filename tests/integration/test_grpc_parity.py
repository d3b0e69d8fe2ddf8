"""gRPC at parity with HTTP: TrafficPolicy fields act on gRPC calls as on HTTP ones.

One control service and four instances for the whole module, started together:

* ``inventory``: a sync gRPC server (``zone=a, version=v1``) and an aio one
  (``zone=b, version=v2``);
* ``ledger``: an aio gRPC server (``proto=grpc``) and an HTTP instance of the same service
  (``fault_app``, ``proto=http``). HTTP and gRPC calls to ``ledger`` from one workload go
  through one client runtime: one pool admission, one retry budget, one breaker per
  endpoint. Routes send HTTP calls (``x-proto: http``) to the HTTP instance.

Each test applies its own policy and calls from fresh caller meshes (fresh runtimes), with
sync and aio channels. Inbound RateLimit is tested in test_inbound_parity.py; gRPC retries,
breakers of gRPC calls alone and deadlines across hops in test_grpc_resilience.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshlib
from meshlib.errors import CircuitOpen, DeadlineExceeded, FaultInjected, PoolOverflow
from meshlib.integrations import grpc as meshgrpc
from meshlib.resilience.deadline import reset_deadline, set_deadline
from tests.integration.fleet import FleetBase
from tests.integration.grpc_app import IDEMPOTENT, GrpcService, load_protos
from tests.integration.harness import Service, free_port, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

pb, pb_grpc = load_protos()
MODES = ["sync", "aio"]
INVENTORY = {"v1": ("sync", "zone=a,version=v1"), "v2": ("aio", "zone=b,version=v2")}
_keys = itertools.count()


class Fleet(FleetBase):
    """The module's control service, gRPC and HTTP instances, and caller meshes."""

    def start(self) -> None:
        self._caller_token = self.token("frontend", 100)
        inventory, ledger = self.token("inventory", 2), self.token("ledger", 2)
        self.inventory = {
            name: GrpcService(
                self.control, "inventory", self.root, mode=mode, labels=labels, token=inventory
            ).launch()
            for name, (mode, labels) in INVENTORY.items()
        }
        self.ledger = GrpcService(
            self.control, "ledger", self.root, mode="aio", labels="proto=grpc", token=ledger
        ).launch()
        self.instances["ledger-http"] = Service(
            self.control,
            "ledger",
            self.root,
            labels="proto=http",
            token=ledger,
            app="tests.integration.fault_app",
        ).start(wait=False)
        observer = self.mesh()
        for server in self.servers():
            server.wait()
        wait_for(self.instances["ledger-http"]._listening, 30, "ledger (HTTP) listening")
        wait_endpoints(observer, "inventory", 2, timeout=20)
        wait_endpoints(observer, "ledger", 2, timeout=20)

    def servers(self) -> list[GrpcService]:
        return [*self.inventory.values(), self.ledger]

    def mesh(self, zone: str | None = None) -> meshlib.Mesh:
        return self.new_mesh("frontend", self._caller_token, {"zone": zone} if zone else None)

    def close(self) -> None:
        for server in self.servers():  # SIGTERM all at once, then wait for each
            server.process.terminate()
        for server in self.servers():
            server.stop()
        super().close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with contextlib.closing(Fleet(tmp_path_factory.mktemp("grpc-parity"))) as built:
        built.start()
        yield built


def inventory_policy(routes: str, extra: str = "") -> str:
    """inventory's TrafficPolicy: ``x-pin: v1|v2`` routes to one instance, then *routes*."""
    versions = "".join(f"  - {{name: {v}, labels: {{version: {v}}}}}\n" for v in INVENTORY)
    pins = "".join(
        f"  - {{name: pin-{v}, match: {{headers: [{{name: x-pin, exact: {v}}}]}}, "
        f"backends: [{{subset: {v}}}]}}\n"
        for v in INVENTORY
    )
    return (
        "apiVersion: meshlib.io/v1\nkind: TrafficPolicy\n"
        "metadata: {name: inventory, namespace: default}\n"
        "spec:\n  service: inventory\n  loadBalancer: ROUND_ROBIN\n"
        f"  subsets:\n{versions}  routes:\n{pins}{routes}{extra}"
    )


def ledger_policy(marker: str, extra: str = "", retries: str = "{attempts: 0}") -> str:
    """ledger's TrafficPolicy: ``x-proto: http`` to the HTTP instance, the rest to gRPC."""
    return f"""
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {{name: ledger, namespace: default}}
spec:
  service: ledger
  subsets:
  - {{name: grpc, labels: {{proto: grpc}}}}
  - {{name: http, labels: {{proto: http}}}}
  routes:
  - name: http
    match: {{headers: [{{name: x-proto, exact: http}}]}}
    backends: [{{subset: http}}]
    retries: {retries}
  - {{name: {marker}, backends: [{{subset: grpc}}], retries: {retries}}}
{extra}"""


def use(fleet: Fleet, text: str, service: str, marker: str, **mesh: Any) -> meshlib.Mesh:
    """Apply *text*; a fresh caller mesh once it routes *service* by it."""
    caller = fleet.mesh(**mesh)
    apply_to(fleet, text, service, marker, caller)
    wait_endpoints(caller, service, 2)
    return caller


def apply_to(fleet: Fleet, text: str, service: str, marker: str, caller: meshlib.Mesh) -> None:
    """Apply *text* and wait until *caller* routes *service* by it."""
    fleet.apply(text)
    wait_for(
        lambda: marker in [p.name for p in caller.engine.resolve(service).plans],
        10,
        f"policy {marker}",
        interval=0.02,
    )


def key(what: str) -> str:
    return f"{what}-{next(_keys)}-{time.monotonic_ns()}"


def request(item: str) -> Any:
    return pb.ItemRequest(item=item)


def hits(mesh: meshlib.Mesh, service: str, item: str, pin: tuple[str, str]) -> int:
    """How many GetItem(*item*) the instance *pin* routes to has received."""
    with meshgrpc.MeshChannel(service, mesh=mesh) as channel:
        reply = pb_grpc.InventoryStub(channel).GetItem(
            request(f"hits:{item}"), timeout=5, metadata=(pin,)
        )
    return int(reply.stock)


def call_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


async def aio_error(call: Awaitable[Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    return caught.value


async def drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [reply async for reply in stream]


def outcome(call: Callable[[], Any]) -> int | str:
    """The answering port, or the error code's name."""
    try:
        return int(call().port)
    except grpc.RpcError as exc:
        return str(exc.code().name)


async def aio_outcome(call: Awaitable[Any]) -> int | str:
    try:
        return int((await call).port)
    except grpc.RpcError as exc:
        return str(exc.code().name)


def sample(metrics: str, name: str, label_value: str) -> float:
    """The sum of *name*'s samples that have a label equal to *label_value*."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and f'="{label_value}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def flag(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("x-mesh-flag")


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


# --------------------------------------------------------------------- connectionPool


POOL = "  connectionPool: {maxConnections: 1, maxPending: 0}\n"
HTTP = {"x-proto": "http"}


def _pool_overflow(error: grpc.RpcError) -> None:
    assert isinstance(error, meshgrpc.MeshRpcError), error
    assert isinstance(error.mesh_error, PoolOverflow)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert flag(error) == "POOL_OVERFLOW"


def test_pool_limit_is_one_admission_for_grpc_and_http_sync(fleet: Fleet) -> None:
    """With one call allowed in flight, a gRPC call in flight refuses the next gRPC and HTTP
    calls at once (PoolOverflow, flag POOL_OVERFLOW), and an HTTP call in flight refuses gRPC."""
    mesh = use(fleet, ledger_policy("pool", POOL), "ledger", "pool")
    runtime = mesh.view.resolve("ledger").runtime
    with meshgrpc.MeshChannel("ledger", mesh=mesh) as channel, mesh.client() as http:
        stub = pb_grpc.InventoryStub(channel)
        slow = stub.GetItem.future(request("sleep:0.5"), timeout=5)
        started = time.monotonic()
        _pool_overflow(call_error(lambda: stub.GetItem(request("a"), timeout=5)))
        with pytest.raises(PoolOverflow) as refused:
            http.get("http://ledger/status/200", headers=HTTP)
        assert refused.value.flag == "POOL_OVERFLOW"
        assert time.monotonic() - started < 0.4  # failed fast, not after the slow call
        assert slow.result().item == "sleep:0.5"
        wait_for(lambda: runtime.in_flight == 0, 2, "the slow call's admission released")
        assert stub.GetItem(request("b"), timeout=5).item == "b"
        assert http.get("http://ledger/status/200", headers=HTTP).status_code == 200

        with ThreadPoolExecutor(1) as pool:
            slow_http = pool.submit(http.get, "http://ledger/slow/500", headers=HTTP)
            wait_for(lambda: runtime.in_flight == 1, 2, "the HTTP call admitted", interval=0.01)
            _pool_overflow(call_error(lambda: stub.GetItem(request("c"), timeout=5)))
            assert slow_http.result(5).status_code == 200


def test_pool_limit_refuses_aio_grpc_and_async_http(fleet: Fleet) -> None:
    """The same admission for the aio channel and the async HTTP client."""
    mesh = use(fleet, ledger_policy("pool-aio", POOL), "ledger", "pool-aio")
    runtime = mesh.view.resolve("ledger").runtime

    async def scenario() -> None:
        async with (
            meshgrpc.AsyncMeshChannel("ledger", mesh=mesh) as channel,
            mesh.async_client() as http,
        ):
            stub = pb_grpc.InventoryStub(channel)
            slow = stub.GetItem(request("sleep:0.5"), timeout=5)
            for _ in range(200):  # the call is admitted when its task first runs
                if runtime.in_flight == 1:
                    break
                await asyncio.sleep(0.005)
            assert runtime.in_flight == 1
            with pytest.raises(grpc.RpcError) as caught:
                await stub.GetItem(request("a"), timeout=5)
            _pool_overflow(caught.value)
            with pytest.raises(PoolOverflow):
                await http.get("http://ledger/status/200", headers=HTTP)
            assert (await slow).item == "sleep:0.5"
            assert (await stub.GetItem(request("b"), timeout=5)).item == "b"

    run(scenario())
    assert runtime.in_flight == 0


# --------------------------------------------------------------------- retry budget, breakers


BUDGET = "  retryBudget: {percent: 0, minRetriesPerSecond: 0.02, ttl: 50s}\n"  # 1 retry / 50 s
RETRIES = "{attempts: 2, backoff: {baseInterval: 5ms, maxInterval: 10ms}}"


def test_retry_budget_is_shared_by_http_and_grpc_calls(fleet: Fleet) -> None:
    """A budget spent by HTTP retries refuses gRPC retries, and the other way round."""
    text = ledger_policy("budget", BUDGET, retries=RETRIES)
    # HTTP spends the one retry; the gRPC call's retry is refused.
    mesh = use(fleet, text, "ledger", "budget")
    with mesh.client() as http:
        response = http.get("http://ledger/status/503", headers=HTTP)
    assert response.status_code == 503
    assert response.headers["x-mesh-attempts"] == "2"
    assert response.headers["x-mesh-flag"] == "RETRY_BUDGET_EXHAUSTED"
    flaky = f"flaky:{key('budget')}:1"
    with meshgrpc.MeshChannel("ledger", mesh=mesh, idempotent_methods=IDEMPOTENT) as channel:
        error = call_error(lambda: pb_grpc.InventoryStub(channel).GetItem(request(flaky)))
    assert isinstance(error, meshgrpc.BudgetExhaustedRpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "flaky failure 1 of 1"  # the server's answer, as it came
    assert flag(error) == "RETRY_BUDGET_EXHAUSTED"
    assert hits(mesh, "ledger", flaky, ("x-proto", "grpc")) == 1  # not retried
    # One telemetry path: both refusals are counted alike, the gRPC call with its code.
    metrics = mesh.telemetry.prometheus()
    exhausted = sample(metrics, "mesh_client_retry_budget_exhausted_total", "ledger")
    assert exhausted == 2.0, metrics
    assert sample(metrics, "rpc_client_call_duration_seconds_count", "UNAVAILABLE") == 1.0

    # A fresh caller: gRPC spends the retry (and succeeds); HTTP's retry is refused.
    mesh = fleet.mesh()
    wait_endpoints(mesh, "ledger", 2)
    flaky = f"flaky:{key('budget')}:1"
    with meshgrpc.MeshChannel("ledger", mesh=mesh, idempotent_methods=IDEMPOTENT) as channel:
        assert pb_grpc.InventoryStub(channel).GetItem(request(flaky), timeout=5).item == flaky
    with mesh.client() as http:
        response = http.get("http://ledger/status/503", headers=HTTP)
    assert response.status_code == 503
    assert "x-mesh-attempts" not in response.headers  # one try only
    assert response.headers["x-mesh-flag"] == "RETRY_BUDGET_EXHAUSTED"


def test_breakers_are_shared_by_http_and_grpc_calls(fleet: Fleet) -> None:
    """gRPC failures open an endpoint's breaker for HTTP calls too, and the reverse."""
    breaker = "  circuitBreaker: {consecutiveFailures: 2, resetTimeout: 60s}\n"
    mesh = use(fleet, ledger_policy("breaker", breaker), "ledger", "breaker")
    with meshgrpc.MeshChannel("ledger", mesh=mesh) as channel, mesh.client() as http:
        stub = pb_grpc.InventoryStub(channel)
        for _ in range(2):  # the gRPC endpoint fails twice: its breaker opens
            code = call_error(lambda: stub.GetItem(request("down:x"), timeout=5)).code()
            assert code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(CircuitOpen):  # an HTTP call routed there is refused unsent
            http.get("http://ledger/status/200")
        for _ in range(2):  # the HTTP endpoint answers 503 twice: its breaker opens
            assert http.get("http://ledger/status/503", headers=HTTP).status_code == 503
        error = call_error(
            lambda: stub.GetItem(request("a"), timeout=5, metadata=(("x-proto", "http"),))
        )
    assert isinstance(error, meshgrpc.MeshRpcError)
    assert isinstance(error.mesh_error, CircuitOpen)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert flag(error) == "CIRCUIT_OPEN"


# --------------------------------------------------------------------- locality, mirror


def test_zone_preference_sends_grpc_calls_to_the_callers_zone(fleet: Fleet) -> None:
    """A caller in zone a reaches the zone-a instance only (sync), one in b the b one (aio)."""
    text = inventory_policy("  - {name: zones}\n")
    ports = {name: server.port for name, server in fleet.inventory.items()}
    mesh = use(fleet, text, "inventory", "zones", zone="a")
    with meshgrpc.MeshChannel("inventory", mesh=mesh) as channel:
        stub = pb_grpc.InventoryStub(channel)
        assert {stub.GetItem(request("z"), timeout=5).port for _ in range(6)} == {ports["v1"]}
    mesh = use(fleet, text, "inventory", "zones", zone="b")

    async def from_b() -> set[int]:
        async with meshgrpc.AsyncMeshChannel("inventory", mesh=mesh) as channel:
            stub = pb_grpc.InventoryStub(channel)
            return {(await stub.GetItem(request("z"), timeout=5)).port for _ in range(6)}

    assert run(from_b()) == {ports["v2"]}


MIRROR = "  - {name: mirror, backends: [{subset: v1}], mirror: {subset: v2, percent: 100}}\n"


@pytest.mark.parametrize("mode", MODES)
def test_mirror_copies_unary_calls_to_the_mirror_subset(fleet: Fleet, mode: str) -> None:
    """Answers come from v1; every unary call is also sent, fire and forget, to v2."""
    mesh = use(fleet, inventory_policy(MIRROR), "inventory", "mirror")
    item = key(f"mirror-{mode}")
    if mode == "sync":
        with meshgrpc.MeshChannel("inventory", mesh=mesh) as channel:
            stub = pb_grpc.InventoryStub(channel)
            versions = {stub.GetItem(request(item), timeout=5).version for _ in range(4)}
    else:

        async def calls() -> set[str]:
            async with meshgrpc.AsyncMeshChannel("inventory", mesh=mesh) as channel:
                stub = pb_grpc.InventoryStub(channel)
                replies = [await stub.GetItem(request(item), timeout=5) for _ in range(4)]
                await asyncio.sleep(0.05)  # let the shadow copies leave before closing
                return {reply.version for reply in replies}

        versions = run(calls())
    assert versions == {"v1"}
    assert hits(mesh, "inventory", item, ("x-pin", "v1")) == 4
    wait_for(
        lambda: hits(mesh, "inventory", item, ("x-pin", "v2")) == 4,
        5,
        "4 shadow copies at v2",
        interval=0.05,
    )


# --------------------------------------------------------------------- faults


FAULTS = """\
  - name: abort
    match: {headers: [{name: x-fault, exact: abort}]}
    backends: [{subset: v1}]
    fault: {abort: {percent: 100, grpcStatus: 9}}
  - name: abort-http
    match: {headers: [{name: x-fault, exact: abort-http}]}
    backends: [{subset: v1}]
    fault: {abort: {percent: 100, httpStatus: 404}}
  - name: delay
    match: {headers: [{name: x-fault, exact: delay}]}
    backends: [{subset: v2}]
    fault: {delay: {percent: 100, fixedDelay: 300ms}}
  - {name: faults, backends: [{subset: v1}]}
"""


def _fault(error: grpc.RpcError, code: grpc.StatusCode) -> None:
    assert isinstance(error, meshgrpc.MeshRpcError), error
    assert isinstance(error.mesh_error, FaultInjected)
    assert error.code() == code
    assert flag(error) == "FAULT_INJECTED"


@pytest.mark.parametrize("mode", MODES)
def test_fault_abort_and_delay_apply_to_grpc_calls(fleet: Fleet, mode: str) -> None:
    """abort.grpcStatus is the call's code, abort.httpStatus maps as gRPC maps it (404 ->
    UNIMPLEMENTED), nothing reaches the server; a delay holds the call, then it is sent."""
    mesh = use(fleet, inventory_policy(FAULTS), "inventory", "faults")
    item = key(f"fault-{mode}")

    def md(fault: str) -> tuple[tuple[str, str], ...]:
        return (("x-fault", fault),)

    if mode == "sync":
        with meshgrpc.MeshChannel("inventory", mesh=mesh) as channel:
            stub = pb_grpc.InventoryStub(channel)
            abort = call_error(lambda: stub.GetItem(request(item), metadata=md("abort")))
            mapped = call_error(lambda: stub.GetItem(request(item), metadata=md("abort-http")))
            stream = call_error(
                lambda: list(
                    stub.WatchStock(pb.WatchRequest(item=item, count=2), metadata=md("abort"))
                )
            )
            started = time.monotonic()
            reply = stub.GetItem(request(item), timeout=5, metadata=md("delay"))
            delayed = time.monotonic() - started
    else:

        async def calls() -> tuple[Any, ...]:
            async with meshgrpc.AsyncMeshChannel("inventory", mesh=mesh) as channel:
                stub = pb_grpc.InventoryStub(channel)
                abort = await aio_error(stub.GetItem(request(item), metadata=md("abort")))
                mapped = await aio_error(stub.GetItem(request(item), metadata=md("abort-http")))
                watch = pb.WatchRequest(item=item, count=2)
                stream = await aio_error(drain(stub.WatchStock(watch, metadata=md("abort"))))
                started = time.monotonic()
                reply = await stub.GetItem(request(item), timeout=5, metadata=md("delay"))
                return abort, mapped, stream, reply, time.monotonic() - started

        abort, mapped, stream, reply, delayed = run(calls())
    _fault(abort, grpc.StatusCode.FAILED_PRECONDITION)
    _fault(mapped, grpc.StatusCode.UNIMPLEMENTED)
    _fault(stream, grpc.StatusCode.FAILED_PRECONDITION)
    assert hits(mesh, "inventory", item, ("x-pin", "v1")) == 0  # no abort reached v1
    assert reply.version == "v2" and delayed >= 0.3


# --------------------------------------------------------------------- outlier detection


OUTLIERS = (
    "  outlierDetection: {consecutive5xx: 2, interval: 30s, baseEjectionTime: 30s,"
    " maxEjectionPercent: 50}\n"
)


@pytest.mark.parametrize("mode", MODES)
def test_outlier_detection_ejects_the_failing_grpc_endpoint(fleet: Fleet, mode: str) -> None:
    """Round robin over v1 and v2 while v1 fails: after two v1 failures v1 is ejected and
    every call goes to v2."""
    routes = "  - {name: outliers, retries: {attempts: 0}}\n"
    mesh = use(fleet, inventory_policy(routes, OUTLIERS), "inventory", "outliers")
    ports = {name: server.port for name, server in fleet.inventory.items()}
    failing = f"fail-at:{ports['v1']}"

    if mode == "sync":
        with meshgrpc.MeshChannel("inventory", mesh=mesh) as channel:
            stub = pb_grpc.InventoryStub(channel)
            seen = [outcome(lambda: stub.GetItem(request(failing), timeout=5)) for _ in range(8)]
    else:

        async def calls() -> list[int | str]:
            async with meshgrpc.AsyncMeshChannel("inventory", mesh=mesh) as channel:
                stub = pb_grpc.InventoryStub(channel)
                return [
                    await aio_outcome(stub.GetItem(request(failing), timeout=5)) for _ in range(8)
                ]

        seen = run(calls())
    assert seen.count("UNAVAILABLE") == 2, seen
    assert seen[-4:] == [ports["v2"]] * 4, seen  # v1 is out: round robin has one choice
    runtime = mesh.view.resolve("inventory").runtime
    assert runtime.outliers.ejected() == {f"127.0.0.1:{ports['v1']}"}


# --------------------------------------------------------------------- deadlines


DEADLINES = """\
  - name: per-try
    match: {headers: [{name: x-case, exact: per-try}]}
    backends: [{subset: v1}]
    retries: {attempts: 1, perTryTimeout: 200ms, backoff: {baseInterval: 5ms, maxInterval: 10ms}}
  - name: short
    match: {headers: [{name: x-case, exact: short}]}
    backends: [{subset: v2}]
    timeout: 200ms
  - {name: deadlines, backends: [{subset: v1}]}
"""


def _deadline(error: grpc.RpcError, mesh_decided: bool) -> None:
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    if mesh_decided:
        assert isinstance(error, meshgrpc.MeshRpcError)
        assert isinstance(error.mesh_error, DeadlineExceeded)


@pytest.mark.parametrize("mode", MODES)
def test_expired_deadlines_are_deadline_exceeded(fleet: Fleet, mode: str) -> None:
    """An inherited deadline that has passed fails the call unsent; the call's timeout and
    the route's timeout end slow calls on the sync (v1) and aio (v2) servers in time."""
    mesh = use(fleet, inventory_policy(DEADLINES), "inventory", "deadlines")
    item = key(f"expired-{mode}")
    short = (("x-case", "short"),)
    if mode == "sync":
        with meshgrpc.MeshChannel("inventory", mesh=mesh) as channel:
            stub = pb_grpc.InventoryStub(channel)
            token = set_deadline(time.monotonic() - 0.01)
            try:
                expired = call_error(lambda: stub.GetItem(request(item), timeout=5))
            finally:
                reset_deadline(token)
            started = time.monotonic()
            timed_out = call_error(lambda: stub.GetItem(request("sleep:2"), timeout=0.3))
            routed = call_error(lambda: stub.GetItem(request("sleep:2"), metadata=short))
            elapsed = time.monotonic() - started
    else:

        async def calls() -> tuple[Any, ...]:
            async with meshgrpc.AsyncMeshChannel("inventory", mesh=mesh) as channel:
                stub = pb_grpc.InventoryStub(channel)
                token = set_deadline(time.monotonic() - 0.01)
                try:
                    expired = await aio_error(stub.GetItem(request(item), timeout=5))
                finally:
                    reset_deadline(token)
                started = time.monotonic()
                timed_out = await aio_error(stub.GetItem(request("sleep:2"), timeout=0.3))
                routed = await aio_error(stub.GetItem(request("sleep:2"), metadata=short))
                return expired, timed_out, routed, time.monotonic() - started

        expired, timed_out, routed, elapsed = run(calls())
    _deadline(expired, mesh_decided=True)
    _deadline(timed_out, mesh_decided=False)  # the server's deadline, set from ours
    _deadline(routed, mesh_decided=False)
    assert elapsed < 1.5  # 0.3 s + 0.2 s, not the 2 s sleeps
    assert hits(mesh, "inventory", item, ("x-pin", "v1")) == 0  # the expired call was not sent


@pytest.mark.parametrize("mode", MODES)
def test_per_try_timeout_bounds_each_try_of_a_unary_call(fleet: Fleet, mode: str) -> None:
    """A slow idempotent call is tried twice, 200 ms each (perTryTimeout), then fails with
    DEADLINE_EXCEEDED well before its own 5 s timeout."""
    mesh = use(fleet, inventory_policy(DEADLINES), "inventory", "deadlines")
    item = f"sleep:0.6:{key('per-try')}"
    md = (("x-case", "per-try"),)
    started = time.monotonic()
    if mode == "sync":
        with meshgrpc.MeshChannel("inventory", mesh=mesh, idempotent_methods=IDEMPOTENT) as ch:
            stub = pb_grpc.InventoryStub(ch)
            error = call_error(lambda: stub.GetItem(request(item), timeout=5, metadata=md))
    else:

        async def call() -> grpc.RpcError:
            async with meshgrpc.AsyncMeshChannel(
                "inventory", mesh=mesh, idempotent_methods=IDEMPOTENT
            ) as channel:
                stub = pb_grpc.InventoryStub(channel)
                return await aio_error(stub.GetItem(request(item), timeout=5, metadata=md))

        error = run(call())
    elapsed = time.monotonic() - started
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.38 <= elapsed < 1.2, elapsed
    wait_for(lambda: hits(mesh, "inventory", item, ("x-pin", "v1")) == 2, 3, "two tries at v1")


REPLAY = """\
  - name: small
    match: {headers: [{name: x-case, exact: small}]}
    backends: [{subset: v1}]
    retries: {attempts: 1, maxReplayBytes: 8, backoff: {baseInterval: 5ms, maxInterval: 10ms}}
  - name: replay
    backends: [{subset: v1}]
    retries: {attempts: 1, backoff: {baseInterval: 5ms, maxInterval: 10ms}}
"""


@pytest.mark.parametrize("mode", MODES)
def test_max_replay_bytes_bounds_the_requests_retried(fleet: Fleet, mode: str) -> None:
    """A request whose protobuf size is above maxReplayBytes is not retried (as an HTTP body
    above it is not); the same kind of call under the default limit is."""
    mesh = use(fleet, inventory_policy(REPLAY), "inventory", "replay")
    big, fine = f"flaky:{key('replay')}:1", f"flaky:{key('replay')}:1"
    small = (("x-case", "small"),)
    if mode == "sync":
        with meshgrpc.MeshChannel("inventory", mesh=mesh, idempotent_methods=IDEMPOTENT) as ch:
            stub = pb_grpc.InventoryStub(ch)
            error = call_error(lambda: stub.GetItem(request(big), timeout=5, metadata=small))
            reply = stub.GetItem(request(fine), timeout=5)
    else:

        async def calls() -> tuple[grpc.RpcError, Any]:
            async with meshgrpc.AsyncMeshChannel(
                "inventory", mesh=mesh, idempotent_methods=IDEMPOTENT
            ) as channel:
                stub = pb_grpc.InventoryStub(channel)
                error = await aio_error(stub.GetItem(request(big), timeout=5, metadata=small))
                return error, await stub.GetItem(request(fine), timeout=5)

        error, reply = run(calls())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "flaky failure 1 of 1"
    assert reply.item == fine
    assert hits(mesh, "inventory", big, ("x-pin", "v1")) == 1  # one try
    assert hits(mesh, "inventory", fine, ("x-pin", "v1")) == 2  # retried


# --------------------------------------------------------------------- connect failures


CONNECT_RETRIES = "{attempts: 1, backoff: {baseInterval: 5ms, maxInterval: 10ms}}"


@pytest.mark.parametrize("mode", MODES)
def test_connect_failure_is_retried_for_any_method(fleet: Fleet, mode: str, tmp_path: Path) -> None:
    """A try that could not connect sent nothing, so it is retried even for a method not
    marked idempotent. The caller's zone (c) holds only a dead ledger endpoint: every first
    try goes there, fails to connect, and the retry reaches the live one. Without retries
    the same call fails UNAVAILABLE."""
    dead = meshlib.Mesh(
        service="ledger",
        control_url=fleet.control.url,
        token=fleet.token("ledger", 1),
        data_dir=tmp_path / "dead",
        labels={"proto": "grpc", "zone": "c"},
        start_timeout=20,
    ).start()
    try:
        dead.set_endpoint("127.0.0.1", free_port())  # nothing listens there
        mesh = use(
            fleet, ledger_policy("connect", retries=CONNECT_RETRIES), "ledger", "connect", zone="c"
        )
        wait_endpoints(mesh, "ledger", 3)
        if mode == "sync":
            with meshgrpc.MeshChannel("ledger", mesh=mesh) as channel:
                stub = pb_grpc.InventoryStub(channel)
                ports = {stub.GetItem(request("a"), timeout=5).port for _ in range(3)}
                apply_to(fleet, ledger_policy("connect-0"), "ledger", "connect-0", mesh)
                error = call_error(lambda: stub.GetItem(request("a"), timeout=5))
        else:

            async def calls() -> tuple[set[int], grpc.RpcError]:
                async with meshgrpc.AsyncMeshChannel("ledger", mesh=mesh) as channel:
                    stub = pb_grpc.InventoryStub(channel)
                    ports = {(await stub.GetItem(request("a"), timeout=5)).port for _ in range(3)}
                    await asyncio.to_thread(
                        apply_to, fleet, ledger_policy("connect-0"), "ledger", "connect-0", mesh
                    )
                    return ports, await aio_error(stub.GetItem(request("a"), timeout=5))

            ports, error = run(calls())
        assert ports == {fleet.ledger.port}
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "connect" in (error.details() or "").lower()
    finally:
        dead.clear_endpoint()
        dead.close()


# --------------------------------------------------------------------- server telemetry


GET_ITEM = "/meshlib.demo.inventory.v1.Inventory/GetItem"


def vault_policy(service: str) -> str:
    """Only a principal nobody has may call *service*: frontend is denied."""
    return f"""
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: {service}-allow, namespace: default}}
spec:
  service: {service}
  action: ALLOW
  rules:
  - {{name: nobody, from: {{principals: ["spiffe://mesh.local/ns/default/sa/nobody"]}}}}
"""


@pytest.mark.parametrize("mode", MODES)
def test_servers_record_a_refusal_with_its_code(fleet: Fleet, mode: str) -> None:
    """A refused call is one server sample with the refusal's code and one authz denial,
    from the sync and the aio interceptor alike (in-process servers, real mTLS)."""
    from concurrent import futures

    from tests.integration.grpc_app import AioInventory, SyncInventory

    service = f"vault-{mode}"
    served = fleet.new_mesh(service, fleet.token(service, 1))
    caller = fleet.mesh()

    def call(stub: Any) -> grpc.StatusCode:
        try:
            stub.GetItem(request("a"), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    if mode == "sync":
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=served.grpc_server_interceptors(),
        )
        pb_grpc.add_InventoryServicer_to_server(SyncInventory(served), server)
        served.set_endpoint("127.0.0.1", served.add_secure_port(server, "127.0.0.1:0"))
        server.start()
        try:
            wait_endpoints(caller, service, 1)
            fleet.apply(vault_policy(service))
            with meshgrpc.MeshChannel(service, mesh=caller) as channel:
                stub = pb_grpc.InventoryStub(channel)
                wait_for(lambda: call(stub) == grpc.StatusCode.PERMISSION_DENIED, 10, "denied")
        finally:
            served.clear_endpoint()
            server.stop(0)
    else:

        async def scenario() -> None:
            server = grpc.aio.server(interceptors=served.grpc_aio_server_interceptors())
            pb_grpc.add_InventoryServicer_to_server(AioInventory(served), server)
            port = served.add_secure_port(server, "127.0.0.1:0")
            await server.start()
            await asyncio.to_thread(served.set_endpoint, "127.0.0.1", port)
            try:
                await asyncio.to_thread(wait_endpoints, caller, service, 1)
                await asyncio.to_thread(fleet.apply, vault_policy(service))
                async with meshgrpc.AsyncMeshChannel(service, mesh=caller) as channel:
                    stub = pb_grpc.InventoryStub(channel)
                    for _ in range(200):  # at most ~10 s
                        try:
                            await stub.GetItem(request("a"), timeout=5)
                        except grpc.RpcError as exc:
                            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
                            return
                        await asyncio.sleep(0.05)
                    raise AssertionError("the AuthorizationPolicy never applied")
            finally:
                await asyncio.to_thread(served.clear_endpoint)
                await server.stop(0)

        run(scenario())
    metrics = served.telemetry.prometheus()
    assert sample(metrics, "mesh_server_authz_denials_total", GET_ITEM) == 1.0, metrics
    denied = sample(metrics, "rpc_server_call_duration_seconds_count", "PERMISSION_DENIED")
    assert denied == 1.0, metrics
