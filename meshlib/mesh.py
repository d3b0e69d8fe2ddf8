"""``Mesh``: one workload's membership of the mesh, and the factory of meshed clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import httpx
from opentelemetry.trace import TracerProvider

from meshlib.config import MeshConfig
from meshlib.errors import IdentityError, MeshError, StartTimeout
from meshlib.identity.svid import SVID, certificate_fingerprint, load_pem_certificates
from meshlib.identity.tls import TLSContexts
from meshlib.inbound import Admission
from meshlib.integrations.httpx_mesh import AsyncMeshTransport, MeshTransport
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import encode_snapshot
from meshlib.resilience.decorator import resilient
from meshlib.runtime.admin import AdminServer, json_page
from meshlib.runtime.agent import Agent
from meshlib.runtime.view import ActiveView, build_view
from meshlib.runtime.waiting import WaitReporter
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.traffic.balancers import StatsRegistry
from meshlib.transport.pools import MeshPools

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["Mesh"]

P = ParamSpec("P")
R = TypeVar("R")


class Mesh:
    """A workload in the mesh: identity, live policy, and meshed clients and servers.

    Args:
        service: this workload's service name (``MESH_SERVICE``).
        namespace: its namespace (``MESH_NAMESPACE``, default ``default``).
        control_url: the control service (``MESH_CONTROL_URL``): one ``https://`` URL, or
            several replicas to fail over between (a comma list or a sequence of URLs).
        token: join token for the first contact (``MESH_TOKEN``).
        data_dir: cache directory (``MESH_DATA_DIR``).
        labels: instance labels such as ``{"version": "v2", "zone": "b"}``.
        dependencies: services this workload calls; scopes its snapshot (default: all).
        start_timeout: seconds :meth:`start` waits for identity and first snapshot.
        tracer_provider: where spans go (default: the global OpenTelemetry provider).
        meter_provider: where metrics go (default: an in-process meter shown on the admin
            port's ``/metrics``).

    Example::

        mesh = meshlib.Mesh.from_env()
        mesh.start()
        with mesh.client() as http:
            http.get("http://orders/items")
    """

    def __init__(
        self,
        *,
        service: str,
        namespace: str = "default",
        control_url: str | Sequence[str] | None = None,
        token: str | None = None,
        data_dir: str | Path | None = None,
        labels: dict[str, str] | None = None,
        dependencies: list[str] | tuple[str, ...] | None = None,
        start_timeout: float | None = None,
        advertise: str | None = None,
        admin_port: int | None = 0,
        access_log: bool = False,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        options: dict[str, Any] = {
            "service": service,
            "namespace": namespace,
            "control_url": control_url,
            "token": token,
            "data_dir": Path(data_dir) if data_dir is not None else None,
            "labels": dict(labels or {}),
            "dependencies": tuple(dependencies) if dependencies is not None else None,
            "advertise": advertise,
            "admin_port": admin_port,
            "access_log": access_log,
        }
        if start_timeout is not None:
            options["start_timeout"] = start_timeout
        self._init(MeshConfig(**options), tracer_provider, meter_provider)

    def _init(
        self,
        config: MeshConfig,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.config = config
        self._tls: TLSContexts | None = None
        self._view: ActiveView | None = None
        self._pools = MeshPools(self._client_context)  # shared by every client of the mesh
        self._installed_at = time.monotonic()
        self.stats = StatsRegistry()
        self.telemetry = MeshTelemetry(
            service=config.service,
            namespace=config.namespace,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            access_log=config.access_log,
        )
        self.telemetry.gauge_source("mesh.certificate.expiry", self._certificate_expiry)
        self.telemetry.gauge_source("mesh.snapshot.age", self._snapshot_age)
        self._admin: AdminServer | None = None
        self._agent = Agent(
            config,
            on_identity=self._install_identity,
            on_engine=self._install,
            unknown_keys=self._unknown_jwt_keys,
        )
        self._started = False

    @classmethod
    def from_env(
        cls,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        **overrides: Any,
    ) -> Mesh:
        """Build from ``MESH_*`` variables; keyword arguments override them."""
        mesh = cls.__new__(cls)
        mesh._init(MeshConfig.from_env(**overrides), tracer_provider, meter_provider)
        return mesh

    # ------------------------------------------------------------------ state

    def _install_identity(self, svid: SVID) -> None:
        if self._tls is None:
            self._tls = TLSContexts(svid, files_dir=self.config.cache_dir)
        else:
            self._tls.update(svid)

    def _unknown_jwt_keys(self) -> list[tuple[str, str]]:
        """``(jwksUri, kid)`` of tokens the active admission met unknown keys for (drained)."""
        verifier = getattr(getattr(self._view, "inbound", None), "jwt", None)
        return verifier.unknown_keys() if verifier is not None else []

    def _install(self, engine: PolicyEngine) -> None:
        """Build the active view of *engine* (on the agent's thread) and publish it."""
        view = build_view(
            engine,
            self._view,
            stats=self.stats,
            zone=self.config.labels.get("zone"),
            hooks=self.telemetry,
            inbound=Admission.build,
        )
        self._view = view  # one assignment: the request path never sees a mix
        self._installed_at = time.monotonic()
        self.telemetry.declare(engine.services)  # its counters exist at 0 from now on

    def _certificate_expiry(self) -> tuple[float, dict[str, str]] | None:
        if self._tls is None:
            return None
        left = self._tls.svid.not_after - datetime.now(UTC)
        return left.total_seconds(), {"mesh.spiffe_id": str(self._tls.svid.spiffe_id)}

    def _snapshot_age(self) -> tuple[float, dict[str, str]] | None:
        view = self._view
        if view is None:
            return None
        engine = view.engine
        return time.monotonic() - self._installed_at, {"mesh.snapshot.version": engine.version}

    # ------------------------------------------------------------------ admin port

    def _admin_routes(self) -> dict[str, Any]:
        def metrics() -> tuple[int, str, bytes]:
            return 200, "text/plain; version=0.0.4", self.telemetry.prometheus().encode()

        def live() -> tuple[int, str, bytes]:
            return json_page({"live": True})

        def ready() -> tuple[int, str, bytes]:
            ok = self._view is not None and self._tls is not None
            if ok and self._tls is not None:
                ok = self._tls.svid.not_after > datetime.now(UTC)
            return json_page({"ready": ok}, 200 if ok else 503)

        def snapshot() -> tuple[int, str, bytes]:
            view = self._view
            if view is None:
                return json_page({"error": "no snapshot yet"}, 503)
            engine = view.engine
            return json_page(
                {
                    "appliedAgoSeconds": time.monotonic() - self._installed_at,
                    "snapshot": encode_snapshot(engine.snapshot),
                }
            )

        def identity() -> tuple[int, str, bytes]:
            if self._tls is None:
                return json_page({"error": "no SVID yet"}, 503)
            svid = self._tls.svid
            return json_page(
                {
                    "spiffeId": str(svid.spiffe_id),
                    "serial": f"{svid.serial:x}",
                    "notBefore": svid.not_before.isoformat(),
                    "notAfter": svid.not_after.isoformat(),
                    "certificateChain": svid.cert_chain_pem.decode(),
                    "bundleFingerprints": [
                        certificate_fingerprint(c) for c in load_pem_certificates(svid.bundle_pem)
                    ],
                }
            )

        return {
            "/metrics": metrics,
            "/live": live,
            "/ready": ready,
            "/debug/snapshot": snapshot,
            "/debug/identity": identity,
        }

    @property
    def admin_port(self) -> int | None:
        """The bound admin port, once started (None when disabled)."""
        return self._admin.port if self._admin is not None else None

    @property
    def engine(self) -> PolicyEngine:
        """The active policy engine."""
        return self.view.engine

    @property
    def view(self) -> ActiveView:
        """The active view (read on every request, without locks; one reference)."""
        view = self._view
        if view is None:
            raise MeshError("the mesh is not started: call mesh.start() first")
        return view

    @property
    def tls(self) -> TLSContexts:
        """The live TLS contexts of this workload's SVID."""
        if self._tls is None:
            raise IdentityError("no SVID yet: call mesh.start() first")
        return self._tls

    @property
    def spiffe_id(self) -> str:
        """This workload's SPIFFE ID."""
        return str(self.tls.svid.spiffe_id)

    @property
    def started(self) -> bool:
        """True once :meth:`start` returned."""
        return self._started

    @property
    def instance_id(self) -> str:
        """The registry ID of this process's instance."""
        return self._agent.instance_id

    @property
    def last_error(self) -> str | None:
        """The agent's most recent problem talking to the control service, if any."""
        return self._agent.last_error

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float | None = None) -> Mesh:
        """Start the agent; return once identity and first snapshot are ready.

        Raises:
            StartTimeout: nothing usable arrived within *timeout* seconds.
            MeshError: the control service refused us (bad token, …).
        """
        if self._started:
            return self
        if self.config.admin_port is not None and self._admin is None:
            self._admin = AdminServer(self._admin_routes(), port=self.config.admin_port).start()
            self._agent.admin_port = self._admin.port
        self._agent.start()
        limit = timeout or self.config.start_timeout
        deadline = time.monotonic() + limit
        who = f"{self.config.service}.{self.config.namespace}"
        waiting = WaitReporter(who, ",".join(self.config.control_urls), limit)
        while not self._agent.ready.wait(0.05):
            if self._agent.fatal is not None:
                raise self._agent.fatal
            waiting.tick(lambda: self._agent.last_error)  # a start with the control down says so
            if time.monotonic() > deadline:
                self._agent.stop()
                raise StartTimeout(
                    f"mesh did not become ready within {timeout or self.config.start_timeout:g}s "
                    f"(service {self.config.service}); last error: {self._agent.last_error}"
                )
        self._started = True
        return self

    async def astart(self, timeout: float | None = None) -> Mesh:
        """Async twin of :meth:`start` (waits in a worker thread)."""
        return await asyncio.to_thread(self.start, timeout)

    def close(self) -> None:
        """Deregister and stop the agent and the admin port; close the sync connection pools."""
        self._pools.close()
        self._agent.stop()
        self._started = False
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    async def aclose(self) -> None:
        """Async twin of :meth:`close`; also closes this event loop's connection pools."""
        await self._pools.aclose()
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Mesh:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ serving

    def set_endpoint(self, address: str, port: int, *, plaintext_port: int | None = None) -> None:
        """Register this instance as serving at ``address:port`` (``meshlib.serve`` calls it)."""
        self._agent.set_endpoint(
            {"address": address, "port": port, "plaintextPort": plaintext_port}
        )

    def clear_endpoint(self) -> None:
        """Withdraw this instance's endpoint from the registry before it stops serving.

        Blocks up to two seconds for the control service to hear it, so callers stop
        picking this instance before its listener closes.
        """
        self._agent.withdraw()

    # ------------------------------------------------------------------ clients

    def _client_context(self) -> Any:
        return self.tls.client_context()

    def _view_now(self) -> ActiveView:
        view = self._view
        if view is None:
            raise MeshError("the mesh is not started: call mesh.start() first")
        return view

    def transport(self, *, own_pools: bool = False) -> MeshTransport:
        """A sync httpx transport that routes ``http://<service>/…`` over the mesh.

        It sends over the mesh's shared connection pools (``meshlib.transport.pools``);
        with *own_pools* it keeps pools of its own, closed with it.
        """
        return MeshTransport(
            view=self._view_now,
            tls=self._client_context,
            telemetry=self.telemetry,
            pools=None if own_pools else self._pools,
        )

    def async_transport(self, *, own_pools: bool = False) -> AsyncMeshTransport:
        """An async httpx transport that routes ``http://<service>/…`` (see :meth:`transport`)."""
        return AsyncMeshTransport(
            view=self._view_now,
            tls=self._client_context,
            telemetry=self.telemetry,
            pools=None if own_pools else self._pools,
        )

    def resilient(
        self, name: str, *, retry_on: tuple[type[BaseException], ...] = (Exception,)
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Apply the TrafficPolicy named *name* (timeout, budgeted retries, breaker) to a call.

        Example::

            @mesh.resilient("payments", retry_on=(ConnectionError,))
            async def charge(order): ...

        Raises (from the decorated call):
            CircuitOpen: the breaker is open.
            DeadlineExceeded: the policy's timeout passed.
            UnknownServiceError: no TrafficPolicy (or service) of that name is in the snapshot.
        """
        return resilient(self._view_now, name, retry_on=retry_on)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` whose calls to mesh services go over mTLS, by policy."""
        return httpx.Client(transport=self.transport(), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose calls to mesh services go over mTLS, by policy."""
        return httpx.AsyncClient(transport=self.async_transport(), **kwargs)

    # ------------------------------------------------------------------ gRPC

    def grpc_channel(self, service: str, **opts: Any) -> Any:
        """A sync ``grpc.Channel`` to *service* over the mesh (see docs/grpc.md).

        Keyword options go to :class:`meshlib.integrations.grpc.MeshChannel`
        (``idempotent_methods``, ``options``, ``grace``).
        """
        from meshlib.integrations.grpc import MeshChannel

        return MeshChannel(service, mesh=self, **opts)

    def grpc_aio_channel(self, service: str, **opts: Any) -> Any:
        """A ``grpc.aio.Channel`` to *service* over the mesh; use it on one event loop."""
        from meshlib.integrations.grpc import AsyncMeshChannel

        return AsyncMeshChannel(service, mesh=self, **opts)

    def grpc_server_interceptors(self) -> list[Any]:
        """Interceptors enforcing this workload's inbound policy on a sync ``grpc.server``."""
        from meshlib.integrations.grpc import server_interceptors

        return list(server_interceptors(self))

    def grpc_aio_server_interceptors(self) -> list[Any]:
        """Interceptors enforcing this workload's inbound policy on a ``grpc.aio.server``."""
        from meshlib.integrations.grpc import aio_server_interceptors

        return list(aio_server_interceptors(self))

    def add_secure_port(self, server: Any, address: str) -> int:
        """Listen on *address* with this workload's rotating mTLS credentials; return the port."""
        from meshlib.integrations.grpc import add_secure_port

        return add_secure_port(server, address, mesh=self)
