"""``@mesh.resilient`` under a live TrafficPolicy, and ``meshctl apply`` refusing bad fields.

No service instances are needed: a TrafficPolicy alone puts its service in every snapshot,
which is what the decorator reads. One control service serves the module; each test gets a
fresh Mesh, so the decorator's breaker and budget start clean.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import meshlib
from meshlib.errors import CircuitOpen, DeadlineExceeded, UnknownServiceError
from meshlib.resilience.deadline import current_deadline
from meshlib_control.cli import AdminClient
from tests.integration.harness import Control, wait_for

pytestmark = pytest.mark.integration

PAYMENTS = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {{name: payments, namespace: default}}
spec:
  service: payments
  routes:
  - name: {marker}
{route}
{extra}"""


class Plane:
    """The module's control service, its admin client, and Mesh factory for ``checkout``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.control = Control(root / "control")
        self.control.start()
        self.admin = AdminClient(self.control.data_dir)
        body = {"service": "checkout", "namespace": "default", "ttl": "1h", "uses": 50}
        self._token = str(self.admin.call("POST", "/v1/admin/tokens", json=body)["token"])
        self._names = itertools.count()
        self.meshes: list[meshlib.Mesh] = []

    def mesh(self) -> meshlib.Mesh:
        mesh = meshlib.Mesh(
            service="checkout",
            control_url=self.control.url,
            token=self._token,
            data_dir=self.root / f"checkout-{next(self._names)}",
            start_timeout=20,
        )
        self.meshes.append(mesh)
        return mesh.start()

    def apply_payments(self, mesh: meshlib.Mesh, marker: str, route: str = "", extra: str = ""):
        """Apply the payments policy and wait until *mesh* has it (route *marker*)."""
        text = PAYMENTS.format(marker=marker, route=route, extra=extra)
        self.admin.call(
            "POST",
            "/v1/admin/resources",
            content=text.encode(),
            headers={"content-type": "application/yaml"},
        )

        def applied() -> bool:
            service = mesh.engine.resolve("payments")
            return service is not None and marker in [p.name for p in service.plans]

        wait_for(applied, 10, f"payments policy {marker}", interval=0.02)

    def close(self) -> None:
        with ThreadPoolExecutor(8) as pool:  # each close takes about a second
            list(pool.map(meshlib.Mesh.close, self.meshes))
        self.admin.close()
        self.control.stop()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """One control service for the module."""
    built = Plane(tmp_path_factory.mktemp("resilience-api"))
    yield built
    built.close()


def flaky(failures: int) -> tuple[list[float], Callable[[], str]]:
    """A function failing with ConnectionError *failures* times, then returning "charged"."""
    calls: list[float] = []

    def charge() -> str:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise ConnectionError("payment gateway unreachable")
        return "charged"

    return calls, charge


def test_resilient_sync_retries_then_succeeds(plane):
    """A sync function failing twice succeeds on the third try, inside the policy's deadline."""
    mesh = plane.mesh()
    plane.apply_payments(mesh, "sync-retries")
    calls, charge = flaky(2)
    deadlines: list[float | None] = []

    @mesh.resilient("payments")
    def pay() -> str:
        deadlines.append(current_deadline.get())
        return charge()

    began = time.monotonic()
    assert pay() == "charged"
    ended = time.monotonic()
    assert len(calls) == 3  # the default: 2 retries
    assert len(set(deadlines)) == 1  # one deadline for the whole call, retries included
    deadline = deadlines[0]
    assert deadline is not None  # meshed calls made inside inherit it
    assert began + 15.0 <= deadline <= ended + 15.0  # no route timeout: the 15 s default

    with pytest.raises(UnknownServiceError):
        mesh.resilient("nothing-here")(charge)()


def test_resilient_async_retries_then_succeeds(plane):
    """An async function failing twice succeeds on the third try."""
    mesh = plane.mesh()
    plane.apply_payments(mesh, "async-retries")
    calls, charge = flaky(2)

    @mesh.resilient("payments")
    async def pay() -> str:
        await asyncio.sleep(0)
        return charge()

    assert asyncio.run(pay()) == "charged"
    assert len(calls) == 3


def test_resilient_breaker_opens_then_refuses(plane):
    """Failures trip the policy's breaker: the next call raises CircuitOpen without running."""
    mesh = plane.mesh()
    breaker = "  circuitBreaker: {consecutiveFailures: 3, resetTimeout: 30s}\n"
    plane.apply_payments(mesh, "breaker", extra=breaker)
    calls, charge = flaky(100)
    pay = mesh.resilient("payments", retry_on=(ConnectionError,))(charge)

    with pytest.raises(ConnectionError):
        pay()  # three failed tries: the breaker opens on the third
    assert len(calls) == 3
    with pytest.raises(CircuitOpen) as opened:
        pay()
    assert len(calls) == 3  # refused without running
    assert opened.value.flag == "CIRCUIT_OPEN"

    @mesh.resilient("payments")
    async def refund() -> None:
        raise AssertionError("must not run while the breaker is open")

    with pytest.raises(CircuitOpen):
        asyncio.run(refund())

    other_calls: list[int] = []

    def validate() -> None:
        other_calls.append(1)
        raise ValueError("bad card")

    with pytest.raises(CircuitOpen):
        mesh.resilient("payments", retry_on=(ConnectionError,))(validate)()
    assert other_calls == []  # the open breaker refuses it too

    fresh = plane.mesh()  # its own breaker: closed
    plane.apply_payments(fresh, "breaker", extra=breaker)
    with pytest.raises(ValueError):
        fresh.resilient("payments", retry_on=(ConnectionError,))(validate)()
    assert other_calls == [1]  # not a retry_on type: raised at once, not retried


def test_resilient_retries_spend_the_retry_budget(plane):
    """With an empty retry budget, a failing call is tried once."""
    mesh = plane.mesh()
    budget = "  retryBudget: {percent: 0, minRetriesPerSecond: 0, ttl: 10s}\n"
    plane.apply_payments(mesh, "no-budget", extra=budget)
    calls, charge = flaky(1)
    with pytest.raises(ConnectionError):
        mesh.resilient("payments")(charge)()
    assert len(calls) == 1


def test_resilient_async_timeout_raises_deadline_exceeded(plane):
    """An async call running past the policy's timeout is cancelled with DeadlineExceeded."""
    mesh = plane.mesh()
    plane.apply_payments(mesh, "default", route="    timeout: 300ms")
    finished: list[bool] = []

    @mesh.resilient("payments")
    async def pay() -> None:
        await asyncio.sleep(1.5)
        finished.append(True)

    began = time.monotonic()
    with pytest.raises(DeadlineExceeded) as raised:
        asyncio.run(pay())
    assert time.monotonic() - began < 1.0
    assert raised.value.flag == "DEADLINE_EXCEEDED"
    assert finished == []


BAD_FIELDS = [  # (kind, spec body, the path the refusal must name)
    ("TrafficPolicy", "routes:\n  - retries: {attempts: 11}", "spec.routes[0].retries.attempts"),
    ("TrafficPolicy", "routes:\n  - timeout: 0s", "spec.routes[0].timeout"),
    ("TrafficPolicy", "retryBudget: {percent: 120}", "spec.retryBudget.percent"),
    (
        "TrafficPolicy",
        "outlierDetection: {maxEjectionPercent: 101}",
        "spec.outlierDetection.maxEjectionPercent",
    ),
    (
        "TrafficPolicy",
        "circuitBreaker: {consecutiveFailures: 0}",
        "spec.circuitBreaker.consecutiveFailures",
    ),
    ("RateLimit", "requestsPerSecond: 0", "spec.requestsPerSecond"),
]


def test_meshctl_apply_refuses_bad_resilience_fields(plane):
    """meshctl apply refuses out-of-range resilience fields, naming each field's path."""
    texts = [
        f"apiVersion: meshlib.io/v1\nkind: {kind}\nmetadata: {{name: bad}}\n"
        f"spec:\n  service: payments\n  {body}\n"
        for kind, body, _ in BAD_FIELDS
    ]
    with ThreadPoolExecutor(3) as pool:  # each meshctl run is a fresh interpreter
        results = list(
            pool.map(lambda text: plane.control.meshctl("apply", "-f", "-", stdin=text), texts)
        )
    for text, result, (_, _, path) in zip(texts, results, BAD_FIELDS, strict=True):
        assert result.returncode == 1, (text, result.stdout)
        assert path in result.stderr, (text, result.stderr)
    for kind in ("TrafficPolicy", "RateLimit"):
        stored = json.loads(plane.control.ok("get", kind, "-o", "json"))
        assert "bad" not in [r["metadata"]["name"] for r in stored]  # nothing was stored
