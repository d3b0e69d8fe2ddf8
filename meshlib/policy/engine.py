"""The PolicyEngine: one snapshot, compiled once, queried lock-free on every request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshlib.errors import PolicyError
from meshlib.policy.authz import Authorizer, Verdict
from meshlib.policy.routing import CompiledService, RoutePlan, compile_service
from meshlib.policy.snapshot import Snapshot

__all__ = ["CompiledService", "PolicyEngine", "RoutePlan", "Verdict"]


class PolicyEngine:
    """An immutable, compiled view of a :class:`Snapshot`.

    Build it with :meth:`compile`; publish a new one by swapping a single reference.
    """

    __slots__ = ("_aliases", "_authorizer", "peer_mode", "services", "snapshot", "version")

    snapshot: Snapshot
    version: str
    peer_mode: str
    services: tuple[CompiledService, ...]
    _authorizer: Authorizer
    _aliases: dict[str, CompiledService]

    def __init__(self) -> None:
        raise TypeError("use PolicyEngine.compile(snapshot)")

    @classmethod
    def compile(cls, snapshot: Snapshot) -> PolicyEngine:
        """Compile *snapshot*: authorization rules, routes and the host alias table.

        Raises:
            PolicyError: something in the snapshot cannot be compiled; the path names it.
        """
        self = object.__new__(cls)
        self.snapshot = snapshot
        self.version = snapshot.version
        self.peer_mode = snapshot.inbound.peer_mode
        self._authorizer = Authorizer(
            snapshot.inbound.authorization, service=snapshot.service, namespace=snapshot.namespace
        )
        compiled: list[CompiledService] = []
        aliases: dict[str, CompiledService] = {}
        td = snapshot.trust_domain
        for i, entry in enumerate(snapshot.services):
            try:
                service = compile_service(entry, td)
            except PolicyError as exc:
                raise PolicyError(f"services[{i}].{exc.path}", exc.reason) from exc
            compiled.append(service)
            base = f"{entry.name}.{entry.namespace}"
            for alias in (base, f"{base}.svc", f"{base}.svc.{td}"):
                aliases[alias] = service
            if entry.namespace == snapshot.namespace:
                aliases[entry.name] = service
        self.services = tuple(compiled)
        self._aliases = aliases
        return self

    def authorize(
        self,
        peer: str | None,
        method: str,
        path: str,
        principal: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """Decide an inbound request; see :mod:`meshlib.policy.authz` for the semantics.

        Args:
            peer: the caller's SPIFFE ID, or None for a plaintext caller.
            method: upper-case HTTP method (``"POST"`` for gRPC).
            path: request path (``"/pkg.Service/Method"`` for gRPC).
            principal: ``<iss>/<sub>`` of the request's verified JWT, if any.
            claims: that token's claims.
        """
        return self._authorizer.authorize(peer, method, path, principal, claims)

    def resolve(self, host: str) -> CompiledService | None:
        """The service a host name refers to, or None.

        Accepts ``name`` (this workload's namespace), ``name.ns``, ``name.ns.svc`` and
        ``name.ns.svc.<trust-domain>``, in any case and with an optional trailing dot.
        """
        found = self._aliases.get(host)
        if found is None:
            found = self._aliases.get(host.lower().rstrip("."))
        return found

    def __repr__(self) -> str:
        return f"<PolicyEngine version={self.version!r} services={len(self.services)}>"
