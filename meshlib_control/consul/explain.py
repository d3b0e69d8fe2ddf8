"""``meshctl explain NAME`` for an ExternalService: what it selects and that it has no
mesh identity."""

from __future__ import annotations

from typing import Any

from meshlib.policy.externalmodel import ExternalServiceSpec
from meshlib_control.snapshot.builder import MeshState

__all__ = ["IDENTITY", "explain_external", "external_checks"]

IDENTITY = {
    "none": "none: no mesh identity is claimed or checked; calls go in plaintext HTTP",
    "tls": "none: no mesh identity is claimed or checked; calls use server-authenticated TLS "
    "(the certificate verified against {ca}{sni}), without a client certificate",
}


def explain_external(state: MeshState, namespace: str, service: str) -> dict[str, Any] | None:
    """The ``external`` part of the explain answer, or None when *service* is no
    ExternalService."""
    specs = [
        r.spec
        for r in state.resources
        if isinstance(r.spec, ExternalServiceSpec)
        and (r.metadata.namespace, r.metadata.name) == (namespace, service)
    ]
    if not specs:
        return None
    spec = specs[0]
    served = any(
        i.port > 0 and (i.namespace, i.service) == (namespace, service) for i in state.instances
    )
    endpoints = dict(state.external).get((namespace, service), ())
    identity = IDENTITY[spec.tls].format(
        ca="caCertificate" if spec.ca_certificate else "the system trust store",
        sni=f", name {spec.sni}" if spec.sni else ", name: the instance's address",
    )
    return {
        "kind": "ExternalService",
        "consul": {"service": spec.consul_service, "tags": list(spec.tags), "passing": True},
        "tls": spec.tls,
        "identity": identity,
        "used": not served,
        "note": (
            "not used: the mesh service of this name has live instances, which win"
            if served
            else "callers reach the instances Consul lists as passing, with the "
            "TrafficPolicy of this name; library mode only (Envoy sidecars: not honoured)"
        ),
        "endpoints": [
            {"id": e.id, "address": e.address, "port": e.port, "labels": dict(e.labels)}
            for e in endpoints
        ],
    }


def external_checks(state: MeshState, consul_on: bool) -> list[dict[str, str]]:
    """``meshctl check`` rows: an ExternalService that cannot have endpoints (no
    ``--consul``) or has none (no passing instance in Consul) is a warning."""
    rows = []
    imported = dict(state.external)
    for r in state.resources:
        if not isinstance(r.spec, ExternalServiceSpec):
            continue
        key = (r.metadata.namespace, r.metadata.name)
        if not consul_on:
            message = "the control service runs without --consul: it has no endpoints"
        elif not imported.get(key):
            message = f"Consul lists no passing instance of {r.spec.consul_service!r}"
            if r.spec.tags:
                message += f" with tags {', '.join(r.spec.tags)}"
        else:
            continue
        rows.append({"name": f"externalservice {key[0]}/{key[1]}", "status": "warn",
                     "message": message})  # fmt: skip
    return rows
