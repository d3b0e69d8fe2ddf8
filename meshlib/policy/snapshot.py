"""The Snapshot: the immutable, versioned policy value the control service sends a workload.

A snapshot is scoped to one workload: its own inbound policy and the services it calls.
:func:`encode_snapshot` / :func:`decode_snapshot` are its JSON codec; resources inside are
carried in their canonical form (:func:`~meshlib.policy.decode.encode_resource`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshlib.errors import PolicyError
from meshlib.policy.decode import decode_resource, encode_resource, is_dns_label
from meshlib.policy.external import decode_external_service, encode_external_service
from meshlib.policy.externalmodel import ExternalServiceSpec
from meshlib.policy.jwks import check_jwks
from meshlib.policy.model import PEER_MODES, Resource, TrafficPolicySpec

__all__ = [
    "ENDPOINT_MODES",
    "EXTERNAL_MODE",
    "Endpoint",
    "InboundPolicy",
    "ServiceEntry",
    "Snapshot",
    "compute_version",
    "decode_snapshot",
    "encode_service_entry",
    "encode_snapshot",
    "entry_digest",
    "snapshot_version",
    "version_from_parts",
]

ENDPOINT_MODES = ("library", "sidecar")
EXTERNAL_MODE = "external"  # an ExternalService's instance: no SPIFFE ID (spiffeId "")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One registered instance of a service."""

    id: str
    address: str
    port: int
    labels: tuple[tuple[str, str], ...]  # sorted by name
    mode: str  # "library" | "sidecar"
    spiffe_id: str
    # Precomputed once (read several times per request): ``address:port`` with IPv6
    # addresses in brackets, the key of per-endpoint state; and the ``zone`` label.
    authority: str = field(init=False, repr=False, compare=False)
    zone: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if ":" in self.address else self.address
        object.__setattr__(self, "authority", f"{host}:{self.port}")
        object.__setattr__(self, "zone", self.label("zone"))

    def label(self, name: str) -> str | None:
        """The value of label *name*, or None."""
        for key, value in self.labels:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """A service this workload may call, its endpoints and its TrafficPolicy (if any).

    ``external`` is set for an ExternalService (docs/consul.md): then ``spiffe_id`` and
    every endpoint's are ``""`` (no mesh identity is claimed) and it says how to connect.
    """

    name: str
    namespace: str
    spiffe_id: str
    endpoints: tuple[Endpoint, ...]
    traffic_policy: Resource | None = None
    external: ExternalServiceSpec | None = None


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """What the workload enforces on requests it receives."""

    peer_mode: str = "STRICT"
    authorization: tuple[Resource, ...] = ()
    rate_limit: Resource | None = None
    # RequestAuthentications of the workload, and the key sets the control service fetched
    # for their jwksUris: (uri, canonical JWKS JSON), sorted by uri (meshlib.policy.jwks).
    request_authentication: tuple[Resource, ...] = ()
    jwks: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one workload needs; ``services`` is sorted by (namespace, name).

    ``trust_bundle`` is the mesh's trust bundle (PEM roots, "" when the control service
    sent none): it travels in every snapshot so that a root added or retired reaches
    every workload within the propagation time, not only with its next SVID.
    """

    version: str
    trust_domain: str
    service: str
    namespace: str
    inbound: InboundPolicy
    services: tuple[ServiceEntry, ...]
    trust_bundle: str = ""


# --- encoding ------------------------------------------------------------------------------


def _encode_endpoint(e: Endpoint) -> dict[str, Any]:
    return {
        "id": e.id,
        "address": e.address,
        "port": e.port,
        "labels": dict(e.labels),
        "mode": e.mode,
        "spiffeId": e.spiffe_id,
    }


def encode_snapshot(s: Snapshot) -> dict[str, Any]:
    """Encode *s* as a JSON-able dict (camelCase keys, resources in canonical form).

    ``trustBundle`` is present only when the snapshot carries one.
    """
    body = {
        "version": s.version,
        "trustDomain": s.trust_domain,
        "service": s.service,
        "namespace": s.namespace,
        "inbound": {
            "peerMode": s.inbound.peer_mode,
            "authorization": [encode_resource(r) for r in s.inbound.authorization],
            "rateLimit": None
            if s.inbound.rate_limit is None
            else encode_resource(s.inbound.rate_limit),
            **_encode_jwt(s.inbound),
        },
        "services": [encode_service_entry(e) for e in s.services],
    }
    if s.trust_bundle:
        body["trustBundle"] = s.trust_bundle
    return body


def _encode_jwt(inbound: InboundPolicy) -> dict[str, Any]:
    # Only when used: a snapshot without end-user authentication keeps its old form.
    if not inbound.request_authentication and not inbound.jwks:
        return {}
    return {
        "requestAuthentication": [encode_resource(r) for r in inbound.request_authentication],
        "jwks": dict(inbound.jwks),
    }


def encode_service_entry(e: ServiceEntry) -> dict[str, Any]:
    """One ``services[]`` item of :func:`encode_snapshot` (``external`` only when set)."""
    out = {
        "name": e.name,
        "namespace": e.namespace,
        "spiffeId": e.spiffe_id,
        "endpoints": [_encode_endpoint(x) for x in e.endpoints],
        "trafficPolicy": None if e.traffic_policy is None else encode_resource(e.traffic_policy),
    }
    if e.external is not None:
        out["external"] = encode_external_service(e.external)
    return out


def _canonical(value: Any) -> bytes:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def entry_digest(encoded_entry: Mapping[str, Any]) -> str:
    """sha256 of one encoded service entry's canonical JSON (a part of the version)."""
    return hashlib.sha256(_canonical(encoded_entry)).hexdigest()


def version_from_parts(head: Mapping[str, Any], entry_digests: Sequence[str]) -> str:
    """The version from the snapshot's other fields and its service entries' digests.

    A builder serving many callers digests each service entry once per mesh state and
    combines them here per caller, instead of re-encoding the whole mesh for every caller.
    """
    content = {k: v for k, v in head.items() if k not in ("version", "services")}
    content["services"] = list(entry_digests)
    return hashlib.sha256(_canonical(content)).hexdigest()[:16]


def snapshot_version(body: Mapping[str, Any]) -> str:
    """The version of an encoded snapshot: a content hash, ``version`` itself left out.

    sha256 over the canonical JSON of every field but ``services``, with ``services``
    replaced by the sha256 of each entry's canonical JSON (:func:`version_from_parts`).

    Returns:
        The first 16 hex digits.
    """
    return version_from_parts(body, [entry_digest(e) for e in body.get("services", [])])


def compute_version(s: Snapshot) -> str:
    """``snapshot_version(encode_snapshot(s))``: the version *s* should carry."""
    return snapshot_version(encode_snapshot(s))


# --- decoding ------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A short, always printable form of *value* (``repr`` of a huge int raises ValueError)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 64 else repr(value[:61] + "...")
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -(10**18) < value < 10**18 else "a very large integer"
    return type(value).__name__


def _fields(value: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(path, "must be a mapping")
    for key in value:
        if key not in allowed:
            name = key if isinstance(key, str) and len(key) <= 64 else _show(key)
            raise PolicyError(f"{path}.{name}" if path else name, "unknown field")
    for key in allowed:
        if key not in value:
            raise PolicyError(f"{path}.{key}" if path else key, "required")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError(path, "must be a non-empty string")
    return value


def _label(value: Any, path: str) -> str:
    if not isinstance(value, str) or not is_dns_label(value):
        raise PolicyError(path, f"must be a DNS label, got {_show(value)}")
    return value


def _spiffe(value: Any, path: str) -> str:
    text = _str(value, path)
    if not text.startswith("spiffe://"):
        raise PolicyError(path, f"must be a spiffe:// ID, got {_show(text)}")
    return text


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise PolicyError(path, "must be a list")
    return list(value)


def _resource(value: Any, path: str, kind: str) -> Resource:
    try:
        res = decode_resource(value)
    except PolicyError as exc:
        raise PolicyError(f"{path}.{exc.path}" if exc.path else path, exc.reason) from exc
    if res.kind != kind:
        raise PolicyError(f"{path}.kind", f"must be {kind}, got {res.kind}")
    return res


def _endpoint(value: Any, path: str, external: bool) -> Endpoint:
    """An endpoint; those of an external service are mode ``external`` with no SPIFFE ID."""
    mp = _fields(value, path, ("id", "address", "port", "labels", "mode", "spiffeId"))
    port = mp["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PolicyError(
            f"{path}.port", f"must be an integer between 1 and 65535, got {_show(port)}"
        )
    labels = mp["labels"]
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise PolicyError(f"{path}.labels", "must be a mapping of strings to strings")
    mode = mp["mode"]
    modes = (EXTERNAL_MODE,) if external else ENDPOINT_MODES
    if not isinstance(mode, str) or mode not in modes:
        raise PolicyError(f"{path}.mode", f"must be one of {', '.join(modes)}")
    if external and mp["spiffeId"] != "":
        raise PolicyError(f"{path}.spiffeId", "must be '' for an external service")
    return Endpoint(
        id=_str(mp["id"], f"{path}.id"),
        address=_str(mp["address"], f"{path}.address"),
        port=port,
        labels=tuple(sorted(labels.items())),
        mode=mode,
        spiffe_id="" if external else _spiffe(mp["spiffeId"], f"{path}.spiffeId"),
    )


def _service(value: Any, path: str) -> ServiceEntry:
    external = None
    if isinstance(value, Mapping) and "external" in value:
        external = value["external"]
        value = {k: v for k, v in value.items() if k != "external"}
    mp = _fields(value, path, ("name", "namespace", "spiffeId", "endpoints", "trafficPolicy"))
    name = _label(mp["name"], f"{path}.name")
    namespace = _label(mp["namespace"], f"{path}.namespace")
    spec = None
    if external is not None:
        spec = decode_external_service(external, f"{path}.external", name)
        if mp["spiffeId"] != "":
            raise PolicyError(f"{path}.spiffeId", "must be '' for an external service")
    where = f"{path}.endpoints"
    endpoints = tuple(
        _endpoint(e, f"{where}[{i}]", spec is not None)
        for i, e in enumerate(_list(mp["endpoints"], where))
    )
    policy = None
    if mp["trafficPolicy"] is not None:
        policy = _resource(mp["trafficPolicy"], f"{path}.trafficPolicy", "TrafficPolicy")
        assert isinstance(policy.spec, TrafficPolicySpec)
        if (policy.spec.service, policy.metadata.namespace) != (name, namespace):
            raise PolicyError(
                f"{path}.trafficPolicy.spec.service",
                f"policy for {policy.spec.service}.{policy.metadata.namespace} "
                f"attached to {name}.{namespace}",
            )
    return ServiceEntry(
        name=name,
        namespace=namespace,
        spiffe_id="" if spec is not None else _spiffe(mp["spiffeId"], f"{path}.spiffeId"),
        endpoints=endpoints,
        traffic_policy=policy,
        external=spec,
    )


def _decode_jwks(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise PolicyError("inbound.jwks", "must be a mapping of jwksUri to key set")
    out = []
    for uri, text in value.items():
        where = f"inbound.jwks[{_show(uri)}]"
        out.append((_str(uri, where), check_jwks(text, where)))
    return tuple(sorted(out))


PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
MAX_BUNDLE_BYTES = 64 * 1024


def _bundle(value: Any) -> str:
    """The ``trustBundle`` text: PEM certificates (their contents are checked by the
    agent, which owns the cryptography; this pure layer checks only the shape)."""
    if not isinstance(value, str) or PEM_CERTIFICATE not in value:
        raise PolicyError("trustBundle", "must be PEM text holding one or more certificates")
    if len(value) > MAX_BUNDLE_BYTES:
        raise PolicyError("trustBundle", f"longer than {MAX_BUNDLE_BYTES} bytes")
    return value


def decode_snapshot(d: Mapping[str, Any]) -> Snapshot:
    """Decode an encoded snapshot; ``services`` are put in (namespace, name) order.

    Raises:
        PolicyError: anything missing, unknown or malformed, with its path; also duplicate
            services.
    """
    if isinstance(d, Mapping) and "trustBundle" in d:
        trust_bundle = _bundle(d["trustBundle"])
        d = {k: v for k, v in d.items() if k != "trustBundle"}
    else:
        trust_bundle = ""
    mp = _fields(d, "", ("version", "trustDomain", "service", "namespace", "inbound", "services"))
    raw_inbound = mp["inbound"]
    jwt_keys = ("requestAuthentication", "jwks")
    optional = (
        {k: v for k, v in raw_inbound.items() if k in jwt_keys}
        if isinstance(raw_inbound, Mapping)
        else {}
    )
    if optional:
        raw_inbound = {k: v for k, v in raw_inbound.items() if k not in jwt_keys}
    inbound = _fields(raw_inbound, "inbound", ("peerMode", "authorization", "rateLimit"))
    if not isinstance(inbound["peerMode"], str) or inbound["peerMode"] not in PEER_MODES:
        raise PolicyError("inbound.peerMode", f"must be one of {', '.join(PEER_MODES)}")
    authz = tuple(
        _resource(r, f"inbound.authorization[{i}]", "AuthorizationPolicy")
        for i, r in enumerate(_list(inbound["authorization"], "inbound.authorization"))
    )
    rate_limit = None
    if inbound["rateLimit"] is not None:
        rate_limit = _resource(inbound["rateLimit"], "inbound.rateLimit", "RateLimit")
    services = tuple(
        _service(s, f"services[{i}]") for i, s in enumerate(_list(mp["services"], "services"))
    )
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(services):
        if (entry.namespace, entry.name) in seen:
            raise PolicyError(f"services[{i}]", f"duplicate service {entry.name}.{entry.namespace}")
        seen.add((entry.namespace, entry.name))
    return Snapshot(
        version=_str(mp["version"], "version"),
        trust_domain=_str(mp["trustDomain"], "trustDomain"),
        service=_label(mp["service"], "service"),
        namespace=_label(mp["namespace"], "namespace"),
        inbound=InboundPolicy(
            peer_mode=inbound["peerMode"],
            authorization=authz,
            rate_limit=rate_limit,
            request_authentication=tuple(
                _resource(r, f"inbound.requestAuthentication[{i}]", "RequestAuthentication")
                for i, r in enumerate(
                    _list(
                        optional.get("requestAuthentication", []), "inbound.requestAuthentication"
                    )
                )
            ),
            jwks=_decode_jwks(optional.get("jwks", {})),
        ),
        services=tuple(sorted(services, key=lambda e: (e.namespace, e.name))),
        trust_bundle=trust_bundle,
    )
