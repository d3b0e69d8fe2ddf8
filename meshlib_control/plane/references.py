"""Which services a policy names that the control service has never heard of.

Policies may be applied before their services start (a deployment applies both at once),
so a policy naming an unknown service is stored anyway; ``meshctl apply`` prints a warning
and ``meshctl check`` lists it, because ``service: ordres`` for ``orders`` otherwise fails
silently. A service is *known* once it has a live instance, a certificate was issued for
its identity, or a join token was created for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from meshlib.errors import IdentityError
from meshlib.identity.spiffe import SpiffeId
from meshlib.policy.decode import encode_resource
from meshlib.policy.model import Resource

__all__ = ["dry_run_actions", "known_services", "policy_checks", "unknown_service_warnings"]


class _Store(Protocol):
    def resources(self) -> tuple[Resource, ...]: ...
    def certificates(self) -> tuple[Any, ...]: ...
    def tokens(self) -> tuple[Any, ...]: ...


class _Instance(Protocol):
    @property
    def service(self) -> str: ...
    @property
    def namespace(self) -> str: ...


def known_services(store: _Store, instances: Iterable[_Instance]) -> set[tuple[str, str]]:
    """``(namespace, service)`` of every live instance, issued certificate and join token."""
    known = {(i.namespace, i.service) for i in instances}
    known |= _external_names(store.resources())  # ExternalServices are destinations too
    for record in (*store.certificates(), *store.tokens()):
        try:
            spiffe_id = SpiffeId.parse(record.spiffe_id)
        except IdentityError:
            continue
        if spiffe_id.service is not None and spiffe_id.namespace is not None:
            known.add((spiffe_id.namespace, spiffe_id.service))
    return known


def _external_names(resources: Iterable[Resource]) -> set[tuple[str, str]]:
    return {
        (r.metadata.namespace, r.metadata.name) for r in resources if r.kind == "ExternalService"
    }


def unknown_service_warnings(
    resources: Iterable[Resource], known: set[tuple[str, str]]
) -> list[dict[str, str]]:
    """One warning per resource whose ``spec.service`` names no known service (an
    ExternalService in the same batch makes its name known)."""
    resources = list(resources)
    known = known | _external_names(resources)
    warnings = []
    for resource in resources:
        service = getattr(resource.spec, "service", None)
        namespace = resource.metadata.namespace
        if service is None or (namespace, service) in known:
            continue
        warnings.append(
            {
                "kind": resource.kind,
                "namespace": namespace,
                "name": resource.metadata.name,
                "message": f"{resource.kind.lower()}/{namespace}/{resource.metadata.name}: "
                f"spec.service {service!r} names no known service in namespace {namespace!r} "
                "(no instance, certificate or join token yet); stored anyway, it applies once "
                "the service registers",
            }
        )
    return warnings


def dry_run_actions(resources: Iterable[Resource], store: _Store) -> list[tuple[Resource, str]]:
    """What :meth:`apply` would do to each resource (``created``/``configured``/``unchanged``)."""
    stored = {r.key: encode_resource(r) for r in store.resources()}
    actions = []
    for resource in resources:
        current = stored.get(resource.key)
        if current is None:
            actions.append((resource, "created"))
        elif current == encode_resource(resource):
            actions.append((resource, "unchanged"))
        else:
            actions.append((resource, "configured"))
        stored[resource.key] = encode_resource(resource)  # a later duplicate in one batch
    return actions


def policy_checks(
    store: _Store, resources: Iterable[Resource], instances: Iterable[_Instance]
) -> list[dict[str, str]]:
    """``meshctl check`` rows: one summary, then a warning per policy naming no known service."""
    stored = list(resources)
    warnings = unknown_service_warnings(stored, known_services(store, instances))
    rows = [
        {
            "name": "policy references",
            "status": "warn" if warnings else "ok",
            "message": f"{len(stored)} resource(s); {len(warnings)} name a service not known yet",
        }
    ]
    rows.extend(
        {
            "name": f"policy {w['kind'].lower()}/{w['namespace']}/{w['name']}",
            "status": "warn",
            "message": w["message"].split(": ", 1)[1],
        }
        for w in warnings
    )
    return rows
