"""Compiled routing for one destination service: matchers and precomputed route plans.

Everything is built once per snapshot (regexes compiled, subsets resolved to endpoints,
cumulative weights summed) so that :meth:`CompiledService.route` only compares strings.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate

from meshlib.errors import PolicyError
from meshlib.policy.externalmodel import ExternalServiceSpec
from meshlib.policy.model import (
    DEFAULT_BACKEND_WEIGHT,
    CircuitBreakerPolicy,
    ConnectionPool,
    FaultPolicy,
    HeaderMatch,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    Route,
    RouteMatch,
    TrafficPolicySpec,
)
from meshlib.policy.snapshot import Endpoint, ServiceEntry

__all__ = [
    "DEFAULT_ROUTE_NAME",
    "CompiledService",
    "HeaderMatcher",
    "MirrorPlan",
    "RoutePlan",
    "WeightedBackend",
    "compile_service",
    "headers_match",
]

DEFAULT_ROUTE_NAME = "default"
"""Name of the implicit route taken by requests that match no declared route."""


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    """A backend of a route with its endpoints resolved (possibly none)."""

    subset: str | None
    weight: int
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class MirrorPlan:
    """Where to mirror a copy of ``percent`` of the route's requests."""

    subset: str | None
    percent: float
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """A compiled header match (fault injection filters requests with these too)."""

    name: str
    kind: str
    value: str
    regex: re.Pattern[str] | None

    def matches(self, headers: Mapping[str, str]) -> bool:
        """True when *headers* (lower-case names) satisfy this match."""
        got = headers.get(self.name)
        if got is None:
            return False
        if self.kind == "exact":
            return got == self.value
        if self.regex is not None:
            return self.regex.fullmatch(got) is not None
        return True  # present


def headers_match(matchers: tuple[HeaderMatcher, ...], headers: Mapping[str, str]) -> bool:
    """True when every matcher matches (vacuously true for none)."""
    return all(h.matches(headers) for h in matchers)


def _header_matcher(h: HeaderMatch) -> HeaderMatcher:
    return HeaderMatcher(
        h.name, h.kind, h.value, re.compile(h.value) if h.kind == "regex" else None
    )


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Everything a client needs to send a request that took one route."""

    name: str
    backends: tuple[WeightedBackend, ...]
    timeout: float | None
    retries: RetryPolicy
    fault: FaultPolicy | None
    mirror: MirrorPlan | None
    fault_headers: tuple[HeaderMatcher, ...] = field(init=False, repr=False, compare=False)
    _cumulative: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.backends or sum(b.weight for b in self.backends) <= 0:
            raise PolicyError(f"route {self.name}", "backends must have a total weight > 0")
        # Precomputed once: frozen, so set through object.__setattr__.
        headers = tuple(_header_matcher(h) for h in self.fault.headers) if self.fault else ()
        object.__setattr__(self, "fault_headers", headers)
        object.__setattr__(self, "_cumulative", tuple(accumulate(b.weight for b in self.backends)))

    def pick_backend(self, rand: float) -> WeightedBackend:
        """Choose a backend by weight; *rand* is uniform in [0, 1). Zero weights never win."""
        cumulative = self._cumulative
        index = bisect_right(cumulative, rand * cumulative[-1])
        if index >= len(cumulative):  # rand*total rounded up to total: take the last real one
            index = bisect_right(cumulative, cumulative[-1] - 1)
        return self.backends[index]

    def fault_applies(self, headers: Mapping[str, str]) -> bool:
        """True when the route has a fault and *headers* satisfy its header filter."""
        return self.fault is not None and headers_match(self.fault_headers, headers)


@dataclass(frozen=True, slots=True)
class _CompiledRoute:
    methods: frozenset[str] | None
    path_kind: str | None
    path_value: str
    path_regex: re.Pattern[str] | None
    headers: tuple[HeaderMatcher, ...]
    plan: RoutePlan

    def matches(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        kind = self.path_kind
        if kind == "prefix":
            if not path.startswith(self.path_value):
                return False
        elif kind == "exact":
            if path != self.path_value:
                return False
        elif self.path_regex is not None and self.path_regex.fullmatch(path) is None:
            return False
        # Skip the generator for the common header-less route (this runs per request).
        return not self.headers or all(h.matches(headers) for h in self.headers)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledService:
    """A destination service as seen by callers: endpoints, policy and compiled routes."""

    name: str
    namespace: str
    spiffe_id: str
    dns_name: str
    endpoints: tuple[Endpoint, ...]
    load_balancer: str
    retry_budget: RetryBudget
    outlier_detection: OutlierDetection | None
    circuit_breaker: CircuitBreakerPolicy | None
    connection_pool: ConnectionPool
    subsets: Mapping[str, tuple[Endpoint, ...]]
    default_plan: RoutePlan
    _routes: tuple[_CompiledRoute, ...] = field(default=(), repr=False)
    external: ExternalServiceSpec | None = None  # an ExternalService: no mesh identity

    @property
    def key(self) -> str:
        """``name.namespace``."""
        return f"{self.name}.{self.namespace}"

    @property
    def plans(self) -> tuple[RoutePlan, ...]:
        """The plans of the declared routes, in order (the default plan excluded)."""
        return tuple(r.plan for r in self._routes)

    @property
    def call_plan(self) -> RoutePlan:
        """The plan for calls that are not HTTP requests (``@mesh.resilient``).

        The first declared route without any match condition, else the default plan.
        """
        for route in self._routes:
            if (
                route.methods is None
                and route.path_kind is None
                and route.path_regex is None
                and not route.headers
            ):
                return route.plan
        return self.default_plan

    def route(self, method: str, path: str, headers: Mapping[str, str]) -> RoutePlan:
        """The plan of the first route matching the request, else the default plan.

        Args:
            method: upper-case HTTP method (``"POST"`` for gRPC).
            path: request path; a query string, if present, is ignored.
            headers: request headers with lower-case names.
        """
        if "?" in path:
            path = path.partition("?")[0]
        for route in self._routes:
            if route.matches(method, path, headers):
                return route.plan
        return self.default_plan


def _compile_route(
    route: Route, endpoints: tuple[Endpoint, ...], subsets: Mapping[str, tuple[Endpoint, ...]]
) -> _CompiledRoute:
    def resolve(subset: str | None) -> tuple[Endpoint, ...]:
        return endpoints if subset is None else subsets[subset]

    mirror = None
    if route.mirror is not None:
        m = route.mirror
        mirror = MirrorPlan(m.subset, m.percent, resolve(m.subset))
    plan = RoutePlan(
        name=route.name,
        backends=tuple(
            WeightedBackend(b.subset, b.weight, resolve(b.subset)) for b in route.backends
        ),
        timeout=route.timeout,
        retries=route.retries,
        fault=route.fault,
        mirror=mirror,
    )
    match: RouteMatch = route.match
    path = match.path
    return _CompiledRoute(
        methods=frozenset(match.methods) if match.methods else None,
        path_kind=path.kind if path is not None else None,
        path_value=path.value if path is not None else "",
        path_regex=re.compile(path.value) if path is not None and path.kind == "regex" else None,
        headers=tuple(_header_matcher(h) for h in match.headers),
        plan=plan,
    )


def compile_service(entry: ServiceEntry, trust_domain: str) -> CompiledService:
    """Compile one snapshot service entry.

    Raises:
        PolicyError: the policy refers to something that does not exist (a subset) or a
            regex fails to compile.
    """
    spec = entry.traffic_policy.spec if entry.traffic_policy is not None else None
    if spec is not None and not isinstance(spec, TrafficPolicySpec):
        raise PolicyError("trafficPolicy", f"must be a TrafficPolicy, got {type(spec).__name__}")
    policy = spec if spec is not None else TrafficPolicySpec(service=entry.name)
    endpoints = entry.endpoints
    subsets: dict[str, tuple[Endpoint, ...]] = {}
    for subset in policy.subsets:
        wanted = set(subset.labels)
        subsets[subset.name] = tuple(e for e in endpoints if wanted.issubset(e.labels))
    try:
        routes = tuple(_compile_route(r, endpoints, subsets) for r in policy.routes)
    except KeyError as exc:
        raise PolicyError("spec.routes", f"unknown subset {exc.args[0]!r}") from exc
    except re.error as exc:
        raise PolicyError("spec.routes", f"invalid regex: {exc}") from exc
    default_plan = RoutePlan(
        name=DEFAULT_ROUTE_NAME,
        backends=(WeightedBackend(None, DEFAULT_BACKEND_WEIGHT, endpoints),),
        timeout=None,
        retries=RetryPolicy(),
        fault=None,
        mirror=None,
    )
    return CompiledService(
        name=entry.name,
        namespace=entry.namespace,
        spiffe_id=entry.spiffe_id,
        dns_name=f"{entry.name}.{entry.namespace}.svc.{trust_domain}",
        endpoints=endpoints,
        load_balancer=policy.load_balancer,
        retry_budget=policy.retry_budget,
        outlier_detection=policy.outlier_detection,
        circuit_breaker=policy.circuit_breaker,
        connection_pool=policy.connection_pool,
        subsets=subsets,
        default_plan=default_plan,
        _routes=routes,
        external=entry.external,
    )
