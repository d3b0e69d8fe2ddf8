"""The ADS server: state-of-the-world xDS v3 for Envoy sidecars, over mTLS.

One bidirectional stream per Envoy (``AggregatedDiscoveryService/StreamAggregatedResources``).
The node says who it is (``node.cluster`` = service, ``node.metadata`` = ports, namespace,
secrets dir); the stream's client certificate must be that service's SVID, so a sidecar can
only ever receive its own workload's configuration. ``node.id`` is an instance id: it must
be one the certificate's identity owns, or a new one, which it then owns (instance ids are
owned for life, see :meth:`ControlPlane.register`); a stream naming another identity's
instance is refused with PERMISSION_DENIED before anything is recorded.

Per stream and per type the server keeps what it sent (version + nonce), what Envoy has
(the last ACKed version) and what Envoy rejected:

* a request whose ``response_nonce`` is not the latest one sent for its type is stale and
  ignored (reference/xds-and-tls-notes.md, section 2);
* a NACK (``error_detail`` set) records the rejected version and its message (reported by
  ``meshctl check``); that version is never sent again: the next push is the next version;
* a snapshot change pushes only the types whose content changed, clusters and their
  endpoints before listeners and routes (make-before-break);
* a type's version is the hash of its content, so a restarted control service computes the
  same versions from the same stored state: a reconnecting Envoy that already has them gets
  nothing (no rollback, no needless reload), and one that lacks them gets the current ones.

Resources come from the PURE translator (:mod:`meshlib_control.xds.translate`) run on the
same snapshot the library receives (cache key: service, namespace, all dependencies).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]
from google.protobuf import any_pb2, json_format

from meshlib.errors import IdentityError
from meshlib.identity.spiffe import SpiffeId
from meshlib.identity.svid import PeerSVIDValidator
from meshlib.identity.tls import TLSContexts
from meshlib.integrations.grpc_server import server_credentials
from meshlib_control.errors import ApiError
from meshlib_control.xds.node import NodeError, node_from_request

# Registers the typed_config messages ParseDict resolves through "@type".
from meshlib_control.xds.protos.envoy.config.cluster.v3 import cluster_pb2
from meshlib_control.xds.protos.envoy.config.endpoint.v3 import endpoint_pb2
from meshlib_control.xds.protos.envoy.config.listener.v3 import listener_pb2
from meshlib_control.xds.protos.envoy.config.route.v3 import route_pb2
from meshlib_control.xds.protos.envoy.extensions.access_loggers.filters.cel.v3 import (
    cel_pb2,  # noqa: F401
)
from meshlib_control.xds.protos.envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from meshlib_control.xds.protos.envoy.extensions.filters.http.jwt_authn.v3 import (
    config_pb2 as jwt_authn_pb2,  # noqa: F401
)
from meshlib_control.xds.protos.envoy.extensions.filters.http.local_ratelimit.v3 import (
    local_rate_limit_pb2,  # noqa: F401
)
from meshlib_control.xds.protos.envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401
from meshlib_control.xds.protos.envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from meshlib_control.xds.protos.envoy.extensions.filters.listener.tls_inspector.v3 import (
    tls_inspector_pb2,  # noqa: F401
)
from meshlib_control.xds.protos.envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from meshlib_control.xds.protos.envoy.extensions.http.early_header_mutation.header_mutation.v3 import (  # noqa: E501, F401
    header_mutation_pb2,
)
from meshlib_control.xds.protos.envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from meshlib_control.xds.protos.envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from meshlib_control.xds.protos.envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from meshlib_control.xds.status import NodeStatus, TypeStatus
from meshlib_control.xds.translate import TYPE_URLS, EnvoyResources, SidecarNode, translate
from meshlib_control.xds.unsupported import Unsupported

if TYPE_CHECKING:
    from meshlib_control.plane import ControlPlane

__all__ = ["PUSH_ORDER", "NodeError", "XdsServer", "node_from_request"]

log = logging.getLogger("meshlib_control.xds")

Json = dict[str, Any]

# Clusters (and their endpoints) before the listeners and routes that use them.
PUSH_ORDER = ("clusters", "endpoints", "listeners", "routes")
_KIND_OF_URL = {url: kind for kind, url in TYPE_URLS.items()}
_MESSAGES: dict[str, Any] = {
    "listeners": listener_pb2.Listener,
    "routes": route_pb2.RouteConfiguration,
    "clusters": cluster_pb2.Cluster,
    "endpoints": endpoint_pb2.ClusterLoadAssignment,
}
_NAME_KEY = {"listeners": "name", "routes": "name", "clusters": "name", "endpoints": "cluster_name"}
WATCH_SLICE = 300.0  # seconds one snapshot watch waits before it is renewed
FIRST_REQUEST_TIMEOUT = 30.0


# --------------------------------------------------------------------- one stream


@dataclass(slots=True)
class _Encoded:
    """One type's resources, packed once per version."""

    version: str
    by_name: dict[str, any_pb2.Any]


def _version(items: Iterable[Json]) -> str:
    text = json.dumps(list(items), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode(kind: str, items: tuple[Json, ...]) -> _Encoded:
    message = _MESSAGES[kind]
    by_name: dict[str, any_pb2.Any] = {}
    for item in items:
        packed = any_pb2.Any()
        packed.Pack(json_format.ParseDict(item, message()))
        by_name[item[_NAME_KEY[kind]]] = packed
    return _Encoded(_version(items), by_name)


@dataclass(slots=True)
class _Subscription:
    requested: bool = False
    names: frozenset[str] = frozenset()
    nonce: str | None = None
    known: str | None = None  # the version Envoy has, or was just sent


class _Stream:
    """The state of one Envoy's ADS stream."""

    def __init__(self, plane: ControlPlane, node_id: str, node: SidecarNode) -> None:
        self.plane = plane
        self.node_id = node_id
        self.node = node
        self.key = (node.service, node.namespace, None)
        self.subs = {kind: _Subscription() for kind in TYPE_URLS}
        self.encoded: dict[str, _Encoded] = {}
        self.snapshot_version = ""
        self.nonce = 0
        self.status = NodeStatus(node_id, node.service, node.namespace)
        plane.xds_status.add(self.status)

    # ---------------------------------------------------------------- resources

    def load(self) -> None:
        """Translate the current snapshot; keep the previous resources if that fails."""
        snapshot = self.plane.cache.get(self.key)
        if snapshot.version == self.snapshot_version:
            return
        try:
            resources: EnvoyResources = translate(snapshot, node=self.node)
            encoded = {kind: _encode(kind, getattr(resources, kind)) for kind in _MESSAGES}
        except Exception as exc:  # a translator bug must not take the stream down
            log.exception("could not translate snapshot %s for %s", snapshot.version, self.node_id)
            self.status.unsupported = (Unsupported("*", "ignored", f"translation failed: {exc}"),)
            return
        self.snapshot_version = snapshot.version
        self.encoded = encoded
        self.status.snapshot_version = snapshot.version
        self.status.unsupported = resources.unsupported

    def _response(self, kind: str) -> discovery_pb2.DiscoveryResponse:
        sub, enc = self.subs[kind], self.encoded[kind]
        if kind in ("listeners", "clusters") and not sub.names:
            resources = list(enc.by_name.values())  # wildcard
        else:
            resources = [enc.by_name[n] for n in sorted(sub.names) if n in enc.by_name]
        self.nonce += 1
        sub.nonce = str(self.nonce)
        sub.known = enc.version
        self.status.types.setdefault(kind, TypeStatus()).sent_version = enc.version
        self.status.pushes += 1
        return discovery_pb2.DiscoveryResponse(
            version_info=enc.version, resources=resources, type_url=TYPE_URLS[kind], nonce=sub.nonce
        )

    def _rejected(self, kind: str) -> str | None:
        status = self.status.types.get(kind)
        return status.rejected_version if status is not None else None

    def changed(self) -> list[discovery_pb2.DiscoveryResponse]:
        """Responses for the subscribed types whose content Envoy does not have."""
        out = []
        for kind in PUSH_ORDER:
            sub, enc = self.subs[kind], self.encoded.get(kind)
            if not sub.requested or enc is None:
                continue
            if enc.version in (sub.known, self._rejected(kind)):
                continue
            out.append(self._response(kind))
        return out

    # ---------------------------------------------------------------- requests

    def handle(self, req: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        """React to one request: record ACK/NACK, answer new subscriptions."""
        kind = _KIND_OF_URL.get(req.type_url)
        if kind is None or kind not in self.encoded:
            return []  # secrets come from local files; nothing else is served
        sub = self.subs[kind]
        if req.response_nonce and req.response_nonce != sub.nonce:
            return []  # stale: an answer to something we have since replaced
        names = frozenset(req.resource_names)
        names_changed = not sub.requested or names != sub.names
        sub.requested, sub.names = True, names
        status = self.status.types.setdefault(kind, TypeStatus())
        if req.HasField("error_detail") and (req.error_detail.code or req.error_detail.message):
            self._nack(kind, status, req.error_detail.message)
        elif req.response_nonce:
            status.acked_version = req.version_info
            # A newer version was accepted: the rejection is history (its version is not
            # sent again unless the policy changes back to it).
            status.rejected_version, status.error = None, None
            self._maybe_applied()
        elif req.version_info:
            # A reconnect: Envoy still runs what it accepted from us (or a previous us).
            sub.known = req.version_info
            status.acked_version = req.version_info
            self._maybe_applied()
        enc = self.encoded[kind]
        if enc.version == status.rejected_version:
            return []
        if names_changed and not (sub.nonce is None and sub.known == enc.version):
            return [self._response(kind)]
        if enc.version != sub.known:
            return [self._response(kind)]
        return []

    def _nack(self, kind: str, status: TypeStatus, message: str) -> None:
        sub = self.subs[kind]
        status.rejected_version = sub.known
        status.error = message
        sub.known = status.acked_version  # Envoy keeps running the last accepted version
        log.warning(
            "sidecar %s (%s) rejected %s version %s: %s",
            self.node_id,
            self.node.service,
            kind,
            status.rejected_version,
            message,
        )
        self.plane.report_sidecar(
            self.node_id,
            self.snapshot_version,
            f"Envoy rejected {kind} version {status.rejected_version}: {message}",
        )

    def _maybe_applied(self) -> None:
        if self.status.applied_version == self.snapshot_version:
            return
        # Every type, requested and ACKed: Envoy asks for listeners only once its clusters
        # have warmed, and a half-configured sidecar has not applied the snapshot.
        for kind in _MESSAGES:
            sub = self.subs[kind]
            if not sub.requested or kind not in self.encoded:
                return
            status = self.status.types.get(kind)
            if status is None or status.acked_version != self.encoded[kind].version:
                return
        self.status.applied_version = self.snapshot_version
        self.plane.report_sidecar(self.node_id, self.snapshot_version, None)


# --------------------------------------------------------------------- the service


def _peer(context: Any, validator: PeerSVIDValidator) -> tuple[str | None, str]:
    """The client's SPIFFE ID after the X.509-SVID leaf rules, or None and the reason."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if len(pems) != 1:
        return None, "no client certificate"
    try:
        return str(validator.validate_pem(pems[0])), ""
    except IdentityError as exc:
        return None, str(exc)


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: ControlPlane, validator: Callable[[], PeerSVIDValidator]) -> None:
        self.plane = plane
        self._validator = validator

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for req in request_iterator:
                    await queue.put(req)
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            try:
                first = await asyncio.wait_for(queue.get(), FIRST_REQUEST_TIMEOUT)
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no request received")
            if first is None:
                return
            stream = await self._open(first, context)
            async for response in self._serve(stream, first, queue):
                yield response
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _open(self, first: discovery_pb2.DiscoveryRequest, context: Any) -> _Stream:
        try:
            node_id, node = node_from_request(first.node, self.plane.trust_domain)
        except NodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        peer, why = _peer(context, self._validator())
        if peer is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client certificate is not a valid X.509-SVID: {why}",
            )
        if peer != node.spiffe_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node.cluster: {node.service} in {node.namespace} is {node.spiffe_id}, "
                f"but the client certificate is {peer}",
            )
        # node.id names an instance: it must be one this identity owns (or a new one, which
        # it now owns), or this stream could write another instance's NACKs and status.
        try:
            self.plane.claim_node(node_id, SpiffeId.parse(node.spiffe_id))
        except ApiError as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if exc.status == 400
                else grpc.StatusCode.RESOURCE_EXHAUSTED
                if exc.status == 429
                else grpc.StatusCode.PERMISSION_DENIED
            )
            await context.abort(code, exc.message)
        log.info("sidecar %s (%s) connected", node_id, node.spiffe_id)
        return _Stream(self.plane, node_id, node)

    async def _serve(
        self,
        stream: _Stream,
        first: discovery_pb2.DiscoveryRequest,
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        cache = self.plane.cache
        stream.load()
        try:
            for response in stream.handle(first):
                yield response
            get: asyncio.Task[Any] = asyncio.create_task(queue.get())
            watch: asyncio.Task[Any] = asyncio.create_task(
                cache.watch(stream.key, stream.snapshot_version, WATCH_SLICE)
            )
            try:
                while True:
                    done, _ = await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                    if watch in done:
                        if watch.result() is not None:
                            stream.load()
                            for response in stream.changed():
                                yield response
                        watch = asyncio.create_task(
                            cache.watch(stream.key, stream.snapshot_version, WATCH_SLICE)
                        )
                    if get in done:
                        req = get.result()
                        if req is None:
                            return
                        for response in stream.handle(req):
                            yield response
                        get = asyncio.create_task(queue.get())
            finally:
                for task in (get, watch):
                    task.cancel()
        finally:
            stream.status.connected = False
            log.info("sidecar %s disconnected", stream.node_id)


class XdsServer:
    """The ADS endpoint of a control service (``--xds-listen``), mTLS with its own SVID."""

    def __init__(self, plane: ControlPlane, contexts: TLSContexts) -> None:
        self.plane = plane
        self.contexts = contexts
        self._server: Any = None
        self.port: int | None = None

    async def start(self, listen: str) -> int:
        """Bind *listen* (``host:port``, port 0 for any) and serve; returns the port."""
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            _Servicer(self.plane, lambda: self.contexts.peer_validator), server
        )
        port = server.add_secure_port(listen, server_credentials(self.contexts))
        if not port:
            raise OSError(f"--xds-listen: cannot bind {listen}")
        await server.start()
        self._server, self.port = server, port
        return int(port)

    async def stop(self, grace: float = 1.0) -> None:
        """Close every stream (Envoy keeps its configuration and reconnects)."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
