"""PURE snapshot builder: (mesh state, calling workload) → Snapshot.

No I/O and no clock: the same state gives the same snapshot and the same version, so a
restarted control service hands every workload (and every Envoy) exactly what it had.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshlib.policy.model import (
    AuthorizationPolicySpec,
    ExternalServiceSpec,
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
    encode_service_entry,
    encode_snapshot,
    entry_digest,
    version_from_parts,
)
from meshlib_control.store.sqlite import InstanceRecord

__all__ = ["MeshState", "build_snapshot", "mesh_services"]

DEFAULT_PEER_MODE = "STRICT"


@dataclass(frozen=True, slots=True)
class MeshState:
    """Everything snapshots are built from."""

    trust_domain: str
    resources: tuple[Resource, ...]
    instances: tuple[InstanceRecord, ...]
    jwks: tuple[tuple[str, str], ...] = ()  # (jwksUri, key set) fetched by meshlib_control.jwks
    trust_bundle: str = ""  # the trust bundle's PEM roots: in every snapshot (root rotation)
    # ExternalServices' endpoints as Consul last listed them (meshlib_control.consul.imports),
    # by (namespace, name): the import keeps the last known list through a Consul outage.
    external: tuple[tuple[tuple[str, str], tuple[Endpoint, ...]], ...] = ()


def _by_name(resources: Sequence[Resource]) -> list[Resource]:
    return sorted(resources, key=lambda r: r.metadata.name)


def mesh_services(state: MeshState) -> list[tuple[str, str]]:
    """Every (namespace, service) that has serving instances or a TrafficPolicy."""
    names = {(i.namespace, i.service) for i in state.instances if i.port > 0}
    for r in state.resources:
        if isinstance(r.spec, TrafficPolicySpec):
            names.add((r.metadata.namespace, r.spec.service))
    return sorted(names)


def _wanted(dependencies: tuple[str, ...] | None, namespace: str) -> set[tuple[str, str]] | None:
    if dependencies is None:
        return None
    wanted: set[tuple[str, str]] = set()
    for dep in dependencies:
        name, _, ns = dep.partition(".")
        wanted.add((ns or namespace, name))
    return wanted


def _inbound(state: MeshState, service: str, namespace: str) -> InboundPolicy:
    local = _by_name([r for r in state.resources if r.metadata.namespace == namespace])
    # Most specific PeerAuthentication wins: the service's own, then the namespace's.
    mode = DEFAULT_PEER_MODE
    for wanted_service in (service, None):
        modes = [
            r.spec.mode
            for r in local
            if isinstance(r.spec, PeerAuthenticationSpec) and r.spec.service == wanted_service
        ]
        if modes:
            mode = modes[0]
            break
    authz = tuple(
        r
        for r in local
        if isinstance(r.spec, AuthorizationPolicySpec) and r.spec.service in (None, service)
    )
    limits = [r for r in local if isinstance(r.spec, RateLimitSpec) and r.spec.service == service]
    authn = tuple(
        r
        for r in local
        if isinstance(r.spec, RequestAuthenticationSpec) and r.spec.service in (None, service)
    )
    uris = {
        rule.jwks_uri
        for r in authn
        if isinstance(r.spec, RequestAuthenticationSpec)
        for rule in r.spec.jwt_rules
        if rule.jwks_uri is not None
    }
    return InboundPolicy(
        peer_mode=mode,
        authorization=authz,
        rate_limit=limits[0] if limits else None,
        request_authentication=authn,
        jwks=tuple((uri, keys) for uri, keys in state.jwks if uri in uris),
    )


def _endpoint(record: InstanceRecord) -> Endpoint:
    return Endpoint(
        id=record.id,
        address=record.address,
        port=record.port,
        labels=record.labels,
        mode=record.mode,
        spiffe_id=record.spiffe_id,
    )


@dataclass(frozen=True, slots=True)
class _Index:
    """What every caller's snapshot shares, computed once per mesh state."""

    services: tuple[tuple[tuple[str, str], ServiceEntry, str], ...]  # key, entry, digest


_last_index: tuple[MeshState, _Index] | None = None


def _index(state: MeshState) -> _Index:
    """The service entries of *state* with their digests; reused while *state* is the same
    object (a state change rebuilds every watched key's snapshot from one state)."""
    global _last_index
    cached = _last_index
    if cached is not None and cached[0] is state:
        return cached[1]
    traffic = {
        (r.metadata.namespace, r.spec.service): r
        for r in reversed(_by_name(state.resources))
        if isinstance(r.spec, TrafficPolicySpec)
    }
    external = {
        (r.metadata.namespace, r.metadata.name): r.spec
        for r in state.resources
        if isinstance(r.spec, ExternalServiceSpec)
    }
    endpoints: dict[tuple[str, str], list[Endpoint]] = {}
    for i in state.instances:
        if i.port > 0:
            endpoints.setdefault((i.namespace, i.service), []).append(_endpoint(i))
    served = {k for k, eps in endpoints.items() if eps}
    services = []
    for ns, name in mesh_services(state):
        if (ns, name) in external and (ns, name) not in served:
            continue  # an ExternalService's name without mesh instances: entry below
        entry = ServiceEntry(
            name=name,
            namespace=ns,
            spiffe_id=f"spiffe://{state.trust_domain}/ns/{ns}/sa/{name}",
            endpoints=tuple(sorted(endpoints.get((ns, name), ()), key=lambda e: e.id)),
            traffic_policy=traffic.get((ns, name)),
        )
        services.append(((ns, name), entry, entry_digest(encode_service_entry(entry))))
    imported = dict(state.external)
    for key, spec in external.items():
        if key in served:
            continue  # a mesh service of that name wins (meshctl explain says so)
        entry = ServiceEntry(
            name=key[1],
            namespace=key[0],
            spiffe_id="",  # no mesh identity is claimed for what Consul lists
            endpoints=tuple(sorted(imported.get(key, ()), key=lambda e: e.id)),
            traffic_policy=traffic.get(key),
            external=spec,
        )
        services.append((key, entry, entry_digest(encode_service_entry(entry))))
    services.sort(key=lambda item: item[0])
    index = _Index(tuple(services))
    _last_index = (state, index)
    return index


def build_snapshot(
    state: MeshState,
    *,
    service: str,
    namespace: str,
    dependencies: tuple[str, ...] | None = None,
) -> Snapshot:
    """The snapshot for one calling workload.

    Args:
        state: resources and registered instances.
        service, namespace: the caller (from its SVID).
        dependencies: services the caller declared it calls (``name`` or ``name.ns``);
            None includes every service of the mesh.
    """
    wanted = _wanted(dependencies, namespace)
    chosen = [
        (entry, digest)
        for key, entry, digest in _index(state).services
        if wanted is None or key in wanted
    ]
    inbound = _inbound(state, service, namespace)
    head = encode_snapshot(
        Snapshot(
            version="",
            trust_domain=state.trust_domain,
            service=service,
            namespace=namespace,
            inbound=inbound,
            services=(),
            trust_bundle=state.trust_bundle,
        )
    )
    return Snapshot(
        version=version_from_parts(head, [digest for _, digest in chosen]),
        trust_domain=state.trust_domain,
        service=service,
        namespace=namespace,
        inbound=inbound,
        services=tuple(entry for entry, _ in chosen),
        trust_bundle=state.trust_bundle,
    )
