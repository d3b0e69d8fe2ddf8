"""``meshlib.testing``: test a meshed app in-process, with a given policy and no control service.

::

    from meshlib.testing import TestMesh, Instance

    POLICY = '''
    apiVersion: meshlib.io/v1
    kind: AuthorizationPolicy
    metadata: {name: orders-callers}
    spec: {service: orders, action: ALLOW, rules: [{from: {principals: ["spiffe://mesh.test/ns/default/sa/frontend"]}}]}
    '''

    with TestMesh(policies=POLICY, services={"payments": payments_app}) as tm:
        app = create_app(mesh=tm.mesh("orders"))        # your factory, given a ready Mesh
        client = tm.client_for(app, as_="frontend")      # an httpx.Client into the app
        assert client.get("/orders").status_code == 200
        assert tm.client_for(app, as_="intruder").get("/orders").status_code == 403

What is real: the policy is decoded and compiled by the library's own code; every identity
has an X.509-SVID from an in-memory CA (P-256, one URI SAN, like the control service's);
``services`` are served by :class:`meshlib.MeshServer` on 127.0.0.1 with real mTLS, so the
app's ``mesh.client()``/``mesh.async_client()`` calls go through routing, subsets,
retries, breakers and the callee's authorization as in production. What is simulated: the
control service (snapshots are built here, scoped as it scopes them) and, for
:meth:`TestMesh.client_for`, the TLS handshake of the *test's* call into the app under test
(the peer certificate arrives as the ASGI TLS extension, as ``meshlib.serve`` provides it).

Serving ``services`` needs uvicorn (``pip install 'inproc-mesh[fastapi]'``); calling the app
under test does not (an in-process ASGI transport, run on one event loop thread).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from meshlib.errors import MeshError
from meshlib.identity.svid import SVID, PeerSVIDValidator
from meshlib.mesh import Mesh
from meshlib.policy.decode import decode_documents
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.jwks import check_jwks
from meshlib.policy.model import (
    AuthorizationPolicySpec,
    PeerAuthenticationSpec,
    RateLimitSpec,
    RequestAuthenticationSpec,
    Resource,
    TrafficPolicySpec,
)
from meshlib.policy.snapshot import (
    Endpoint,
    InboundPolicy,
    ServiceEntry,
    Snapshot,
    compute_version,
)
from meshlib.testing._ca import TestCA

__all__ = ["DEFAULT_TRUST_DOMAIN", "Instance", "TestCA", "TestMesh"]

ASGIApp = Callable[..., Any]

DEFAULT_TRUST_DOMAIN = "mesh.test"
DEFAULT_CALLER = "test-client"
SERVER_START_TIMEOUT = 20.0
CALL_TIMEOUT = 60.0


@dataclass(frozen=True)
class Instance:
    """One served instance of a service: its ASGI app and instance labels (for subsets)."""

    app: ASGIApp
    labels: Mapping[str, str] = field(default_factory=dict)


class _TestAgent:
    """Stands in for the control-service agent: identity and snapshots come from TestMesh."""

    def __init__(self, tm: TestMesh, mesh: Mesh, labels: Mapping[str, str]) -> None:
        real = mesh._agent  # the callbacks Mesh gave its agent: on_identity, on_engine
        self._on_identity: Callable[[SVID], None] = real._on_identity
        self._on_engine: Callable[[PolicyEngine], None] = real._on_engine
        self.tm = tm
        self.service = mesh.config.service
        self.labels = dict(labels)
        self.instance_id = uuid.uuid4().hex[:16]
        self.ready = threading.Event()
        self.fatal: MeshError | None = None
        self.last_error: str | None = None
        self.admin_port: int | None = None

    def start(self) -> None:
        self._on_identity(self.tm.ca.mint(self.service, self.tm.namespace))
        self.tm._join(self)
        self.ready.set()

    def stop(self, timeout: float = 0.0) -> None:
        self.tm._leave(self)

    def install(self, engine: PolicyEngine) -> None:
        self._on_engine(engine)

    def set_endpoint(self, endpoint: dict[str, Any] | None) -> None:
        self.tm._register(self, endpoint)

    def withdraw(self, timeout: float = 0.0) -> None:
        self.tm._register(self, None)


class TestMesh:
    """An in-process mesh for tests: one policy, test identities, meshed apps.

    Args:
        policies: multi-document YAML (or JSON) text, or decoded resources.
        services: services the app under test calls, each an ASGI app or a list of
            :class:`Instance` (labelled, for subsets); served with real mTLS on 127.0.0.1.
        namespace: the namespace of every test workload.
        trust_domain: the trust domain of the in-memory CA.
        jwks: key sets for RequestAuthentication ``jwksUri`` rules, by URI (JWKS JSON text
            or a mapping), standing in for what the control service would fetch; nothing is
            fetched. Inline ``jwks`` rules need nothing here.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        policies: str | Iterable[Resource] = (),
        services: Mapping[str, ASGIApp | Sequence[Instance]] | None = None,
        namespace: str = "default",
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        self.namespace = namespace
        self.ca = TestCA(trust_domain)
        self._resources = _resources(policies)
        self._jwks = tuple(
            sorted((uri, check_jwks(keys, f"jwks[{uri!r}]")) for uri, keys in (jwks or {}).items())
        )
        self._services = {
            name: list(spec) if isinstance(spec, Sequence) else [Instance(spec)]
            for name, spec in (services or {}).items()
        }
        self._lock = threading.RLock()
        self._agents: list[_TestAgent] = []
        self._endpoints: dict[str, Endpoint] = {}
        self._meshes: list[Mesh] = []
        self._servers: list[tuple[Any, threading.Thread]] = []
        self._svids: dict[str, dict[str, Any]] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="meshlib-test-")
        self._loop: _LoopThread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> TestMesh:
        """Serve every instance of ``services`` and wait until each one is registered."""
        for name, instances in self._services.items():
            for instance in instances:
                self._serve(name, instance)
        return self

    def close(self) -> None:
        """Stop the servers and meshes, and delete the test key material."""
        for server, thread in self._servers:
            server.stop()
            thread.join(10)
        self._servers.clear()
        for mesh in self._meshes:
            mesh.close()
        self._meshes.clear()
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self._dir.cleanup()

    def __enter__(self) -> TestMesh:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ public helpers

    def mesh(self, service: str, *, labels: Mapping[str, str] | None = None) -> Mesh:
        """A started :class:`meshlib.Mesh` for *service*: its SVID and policy installed."""
        mesh = Mesh(
            service=service,
            namespace=self.namespace,
            data_dir=Path(self._dir.name) / f"{service}-{len(self._meshes)}",
            labels=dict(labels or {}),
            admin_port=None,
        )
        mesh._agent = _TestAgent(self, mesh, labels or {})  # type: ignore[assignment]
        self._meshes.append(mesh)
        return mesh.start()

    def spiffe_id(self, service: str) -> str:
        """The SPIFFE ID the test CA gives *service*."""
        return self.ca.spiffe_id(service, self.namespace)

    def apply(self, policies: str | Iterable[Resource]) -> None:
        """Replace the whole policy; every test workload gets its new snapshot at once."""
        with self._lock:
            self._resources = _resources(policies)
            self._publish()

    def client_for(
        self, app: ASGIApp, *, as_: str | None = DEFAULT_CALLER, service: str | None = None
    ) -> httpx.Client:
        """An ``httpx.Client`` calling *app* in-process as workload *as_* (None: plaintext).

        Args:
            app: the app under test, with ``MeshMiddleware`` added (or pass *service*).
            as_: the calling workload's service name; its SVID is presented as the
                peer certificate. ``None`` calls without TLS (refused under STRICT).
            service: wrap *app* in ``MeshMiddleware`` with :meth:`mesh` of this service.
        """
        if self._loop is None:
            self._loop = _LoopThread()
        transport = _SyncASGITransport(self._as_peer(app, as_, service), self._loop)
        return httpx.Client(transport=transport, base_url=_base_url(service))

    def async_client_for(
        self, app: ASGIApp, *, as_: str | None = DEFAULT_CALLER, service: str | None = None
    ) -> httpx.AsyncClient:
        """Like :meth:`client_for`, as an ``httpx.AsyncClient`` over ``ASGITransport``."""
        transport = httpx.ASGITransport(app=self._as_peer(app, as_, service))
        return httpx.AsyncClient(transport=transport, base_url=_base_url(service))

    # ------------------------------------------------------------------ internals

    def _as_peer(self, app: ASGIApp, as_: str | None, service: str | None) -> ASGIApp:
        if service is not None:
            from meshlib.integrations.asgi import MeshMiddleware

            app = MeshMiddleware(app, mesh=self.mesh(service))
        extension = None if as_ is None else self._tls_extension(as_)

        async def presenting(scope: Any, receive: Any, send: Any) -> None:
            if extension is not None and scope["type"] in ("http", "websocket"):
                scope = dict(scope)
                scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
            await app(scope, receive, send)

        return presenting

    def _tls_extension(self, caller: str) -> dict[str, Any]:
        cached = self._svids.get(caller)
        if cached is None:
            chain = self.ca.mint(caller, self.namespace).cert_chain_pem
            validator = PeerSVIDValidator({self.ca.trust_domain})
            cached = self._svids[caller] = {
                "server_cert": None,
                "client_cert_chain": [chain.decode()],
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": 0x0304,
                "cipher_suite": None,
                "spiffe_id": str(validator.validate_pem(chain)),
            }
        return cached

    def _serve(self, name: str, instance: Instance) -> None:
        from meshlib.integrations.uvicorn import MeshServer

        mesh = self.mesh(name, labels=instance.labels)
        server = MeshServer(instance.app, mesh=mesh, host="127.0.0.1", port=0)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve()), name=f"test-{name}", daemon=True
        )
        thread.start()
        self._servers.append((server, thread))
        agent = mesh._agent
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while isinstance(agent, _TestAgent) and agent.instance_id not in self._endpoints:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise MeshError(f"test server for {name} did not start listening")
            time.sleep(0.01)

    def _join(self, agent: _TestAgent) -> None:
        with self._lock:
            self._agents.append(agent)
            agent.install(self._engine_for(agent.service))

    def _leave(self, agent: _TestAgent) -> None:
        with self._lock:
            if agent in self._agents:
                self._agents.remove(agent)
            if self._endpoints.pop(agent.instance_id, None) is not None:
                self._publish()

    def _register(self, agent: _TestAgent, endpoint: dict[str, Any] | None) -> None:
        with self._lock:
            if endpoint is None:
                self._endpoints.pop(agent.instance_id, None)
            else:
                self._endpoints[agent.instance_id] = Endpoint(
                    id=agent.instance_id,
                    address=str(endpoint["address"]),
                    port=int(endpoint["port"]),
                    labels=tuple(sorted(agent.labels.items())),
                    mode="library",
                    spiffe_id=self.spiffe_id(agent.service),
                )
            self._publish()

    def _publish(self) -> None:
        for agent in self._agents:
            agent.install(self._engine_for(agent.service))

    def _engine_for(self, service: str) -> PolicyEngine:
        """The snapshot the control service would give *service*, compiled."""
        return PolicyEngine.compile(_snapshot(self, service))


class _LoopThread:
    """One event loop in a daemon thread, where in-process ASGI calls run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="meshlib-testing-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, httpx.Response]) -> httpx.Response:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class _SyncASGITransport(httpx.BaseTransport):
    """httpx's ``ASGITransport`` driven from sync code, on a :class:`_LoopThread`."""

    def __init__(self, app: ASGIApp, loop: _LoopThread) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def call() -> httpx.Response:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._inner.handle_async_request(inner)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        return self._loop.run(call())


def _snapshot(tm: TestMesh, service: str) -> Snapshot:
    ns = tm.namespace
    local = sorted(
        (r for r in tm._resources if r.metadata.namespace == ns), key=lambda r: r.metadata.name
    )
    mode = "STRICT"
    for wanted in (service, None):
        modes = [
            r.spec.mode
            for r in local
            if isinstance(r.spec, PeerAuthenticationSpec) and r.spec.service == wanted
        ]
        if modes:
            mode = modes[0]
            break
    limits = [r for r in local if isinstance(r.spec, RateLimitSpec) and r.spec.service == service]
    inbound = InboundPolicy(
        peer_mode=mode,
        authorization=tuple(
            r
            for r in local
            if isinstance(r.spec, AuthorizationPolicySpec) and r.spec.service in (None, service)
        ),
        rate_limit=limits[0] if limits else None,
        request_authentication=tuple(
            r
            for r in local
            if isinstance(r.spec, RequestAuthenticationSpec) and r.spec.service in (None, service)
        ),
        jwks=tm._jwks,
    )
    traffic = {r.spec.service: r for r in local if isinstance(r.spec, TrafficPolicySpec)}
    names = {a.service for a in tm._agents} | set(tm._services) | set(traffic) | {service}
    endpoints = sorted(tm._endpoints.values(), key=lambda e: e.id)
    entries = tuple(
        ServiceEntry(
            name=name,
            namespace=ns,
            spiffe_id=tm.spiffe_id(name),
            endpoints=tuple(e for e in endpoints if e.spiffe_id == tm.spiffe_id(name)),
            traffic_policy=traffic.get(name),
        )
        for name in sorted(names)
    )
    snapshot = Snapshot(
        version="",
        trust_domain=tm.ca.trust_domain,
        service=service,
        namespace=ns,
        inbound=inbound,
        services=entries,
    )
    return dataclasses.replace(snapshot, version=compute_version(snapshot))


def _resources(policies: str | Iterable[Resource]) -> tuple[Resource, ...]:
    return decode_documents(policies) if isinstance(policies, str) else tuple(policies)


def _base_url(service: str | None) -> str:
    return f"http://{service or 'testserver'}"
