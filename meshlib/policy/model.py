"""The policy resource model: pure, immutable data.

Every resource is a :class:`Resource` (kind, metadata, spec) whose ``spec`` is one of the spec
dataclasses below. Values are decoded and validated by :mod:`meshlib.policy.decode`; this
module only defines their shape and every default, as named constants. Durations are float
seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from meshlib.policy.externalmodel import ExternalServiceSpec
from meshlib.policy.jwtmodel import (
    AuthzCondition,
    ClaimToHeader,
    JwtHeader,
    JwtRule,
    RequestAuthenticationSpec,
)

__all__ = [
    "API_VERSION",
    "AUTHZ_ACTIONS",
    "DEFAULT_ABORT_HTTP_STATUS",
    "DEFAULT_AUTHZ_ACTION",
    "DEFAULT_BACKEND_WEIGHT",
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_BREAKER_CONSECUTIVE_FAILURES",
    "DEFAULT_BREAKER_RESET_TIMEOUT",
    "DEFAULT_BUDGET_MIN_RETRIES_PER_SECOND",
    "DEFAULT_BUDGET_PERCENT",
    "DEFAULT_BUDGET_TTL",
    "DEFAULT_LOAD_BALANCER",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_REPLAY_BYTES",
    "DEFAULT_MIRROR_PERCENT",
    "DEFAULT_NAMESPACE",
    "DEFAULT_OUTLIER_BASE_EJECTION_TIME",
    "DEFAULT_OUTLIER_CONSECUTIVE_5XX",
    "DEFAULT_OUTLIER_CONSECUTIVE_GATEWAY_ERRORS",
    "DEFAULT_OUTLIER_INTERVAL",
    "DEFAULT_OUTLIER_MAX_EJECTION_PERCENT",
    "DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_RETRY_ON",
    "DEFAULT_TIMEOUT",
    "EWMA_DECAY",
    "GATEWAY_ERROR_STATUSES",
    "KINDS",
    "LOAD_BALANCERS",
    "MAX_BACKEND_WEIGHT",
    "MAX_BUDGET_MIN_RETRIES_PER_SECOND",
    "MAX_BURST",
    "MAX_CONNECTIONS_LIMIT",
    "MAX_CONSECUTIVE_ERRORS",
    "MAX_DURATION",
    "MAX_GLOB_LENGTH",
    "MAX_PENDING_LIMIT",
    "MAX_REPLAY_BYTES_LIMIT",
    "MAX_REQUESTS_PER_SECOND",
    "MAX_RETRY_ATTEMPTS",
    "MIN_DURATION",
    "MIN_REQUESTS_PER_SECOND",
    "PEER_MODES",
    "RETRY_ON_CONDITIONS",
    "AbortFault",
    "AuthorizationPolicySpec",
    "AuthzCondition",
    "AuthzRule",
    "Backend",
    "Backoff",
    "CircuitBreakerPolicy",
    "ClaimToHeader",
    "ConnectionPool",
    "DelayFault",
    "ExternalServiceSpec",
    "FaultPolicy",
    "HeaderMatch",
    "JwtHeader",
    "JwtRule",
    "Metadata",
    "MirrorPolicy",
    "OutlierDetection",
    "PathMatch",
    "PeerAuthenticationSpec",
    "RateLimitSpec",
    "RequestAuthenticationSpec",
    "Resource",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "RouteMatch",
    "Spec",
    "Subset",
    "TrafficPolicySpec",
]

API_VERSION = "meshlib.io/v1"
KINDS = (
    "TrafficPolicy",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "RateLimit",
    "RequestAuthentication",
    "ExternalService",
)
DEFAULT_NAMESPACE = "default"

# --- ranges ----------------------------------------------------------------------------------
# Every numeric field has an upper bound: a value the data plane cannot represent (a float
# that overflows, a count Envoy stores in 32 bits, a timer of centuries) is refused when
# decoded, so any snapshot a workload accepts also builds its runtime objects.
MIN_DURATION = 0.001
"""Shortest duration accepted anywhere, in seconds (1 ms; Envoy would round less to 0s)."""
MAX_DURATION = 24 * 3600.0
"""Longest duration accepted anywhere, in seconds (24 h, as the deadline header's cap)."""
MAX_GLOB_LENGTH = 1024
"""Longest AuthorizationPolicy glob (principal, namespace, path), in characters."""

# --- TrafficPolicy -------------------------------------------------------------------------
LOAD_BALANCERS = ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "P2C_EWMA")
DEFAULT_LOAD_BALANCER = "LEAST_REQUEST"
EWMA_DECAY = 10.0
"""Decay period, in seconds, of the peak-EWMA latency estimate (P2C_EWMA)."""

DEFAULT_TIMEOUT = 15.0
"""Overall deadline the HTTP client applies when a route sets no ``timeout``."""

DEFAULT_BACKEND_WEIGHT = 100
MAX_BACKEND_WEIGHT = 1000

RETRY_ON_CONDITIONS = ("connect-failure", "reset", "5xx", "gateway-error", "retriable-status-codes")
DEFAULT_RETRY_ON = ("connect-failure", "reset", "gateway-error")
GATEWAY_ERROR_STATUSES = frozenset({502, 503, 504})
DEFAULT_RETRY_ATTEMPTS = 2
MAX_RETRY_ATTEMPTS = 10
DEFAULT_BACKOFF_BASE = 0.025
DEFAULT_BACKOFF_MAX = 0.25
DEFAULT_MAX_REPLAY_BYTES = 65536
MAX_REPLAY_BYTES_LIMIT = 16 * 1024 * 1024

DEFAULT_ABORT_HTTP_STATUS = 503
DEFAULT_MIRROR_PERCENT = 100.0

DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_BUDGET_MIN_RETRIES_PER_SECOND = 10.0
DEFAULT_BUDGET_TTL = 10.0

DEFAULT_OUTLIER_CONSECUTIVE_5XX = 5
DEFAULT_OUTLIER_CONSECUTIVE_GATEWAY_ERRORS = 5
DEFAULT_OUTLIER_INTERVAL = 10.0
DEFAULT_OUTLIER_BASE_EJECTION_TIME = 30.0
DEFAULT_OUTLIER_MAX_EJECTION_PERCENT = 50

DEFAULT_BREAKER_CONSECUTIVE_FAILURES = 5
DEFAULT_BREAKER_RESET_TIMEOUT = 30.0

MAX_CONSECUTIVE_ERRORS = 10_000
"""Upper bound of consecutive5xx, consecutiveGatewayErrors and consecutiveFailures."""
MAX_BUDGET_MIN_RETRIES_PER_SECOND = 10_000.0

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_MAX_PENDING = 100
MAX_CONNECTIONS_LIMIT = 100_000
MAX_PENDING_LIMIT = 100_000

# --- AuthorizationPolicy / PeerAuthentication ------------------------------------------------
AUTHZ_ACTIONS = ("ALLOW", "DENY")
DEFAULT_AUTHZ_ACTION = "ALLOW"
PEER_MODES = ("STRICT", "PERMISSIVE")

# --- RateLimit -------------------------------------------------------------------------------
MIN_REQUESTS_PER_SECOND = 0.001
MAX_REQUESTS_PER_SECOND = 1_000_000.0
MAX_BURST = 1_000_000
"""Largest bucket; Envoy's ``max_tokens`` is 32-bit and the library's bucket a float."""


@dataclass(frozen=True, slots=True)
class Metadata:
    """Name and namespace of a resource (both DNS labels)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE


@dataclass(frozen=True, slots=True)
class Subset:
    """A named group of endpoints: those whose labels include every pair of ``labels``."""

    name: str
    labels: tuple[tuple[str, str], ...]  # sorted by key


@dataclass(frozen=True, slots=True)
class PathMatch:
    """Match on the request path (query string excluded); regexes must match the whole path."""

    kind: Literal["exact", "prefix", "regex"]
    value: str


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """Match on one request header (lower-case ``name``); ``value`` is "" for ``present``."""

    name: str
    kind: Literal["exact", "regex", "present"]
    value: str = ""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Conditions a request must all meet; empty fields match everything."""

    path: PathMatch | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Backend:
    """A weighted destination: one subset, or every endpoint when ``subset`` is None."""

    subset: str | None = None
    weight: int = DEFAULT_BACKEND_WEIGHT


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff between retries, in seconds."""

    base_interval: float = DEFAULT_BACKOFF_BASE
    max_interval: float = DEFAULT_BACKOFF_MAX


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often a failed call is tried again."""

    attempts: int = DEFAULT_RETRY_ATTEMPTS
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    retriable_status_codes: tuple[int, ...] = ()
    backoff: Backoff = field(default_factory=Backoff)
    allow_non_idempotent: bool = False
    max_replay_bytes: int = DEFAULT_MAX_REPLAY_BYTES


@dataclass(frozen=True, slots=True)
class DelayFault:
    """Delay ``percent`` of matching requests by ``fixed_delay`` seconds."""

    percent: float
    fixed_delay: float


@dataclass(frozen=True, slots=True)
class AbortFault:
    """Answer ``percent`` of matching requests with an error status."""

    percent: float
    http_status: int = DEFAULT_ABORT_HTTP_STATUS
    grpc_status: int | None = None


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """Fault injection; applies only to requests matching every header match given."""

    delay: DelayFault | None = None
    abort: AbortFault | None = None
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """Send a fire-and-forget copy of ``percent`` of requests to a subset (None = all)."""

    subset: str | None = None
    percent: float = DEFAULT_MIRROR_PERCENT


@dataclass(frozen=True, slots=True)
class Route:
    """One routing rule; the first route whose ``match`` matches a request wins."""

    name: str
    match: RouteMatch = field(default_factory=RouteMatch)
    backends: tuple[Backend, ...] = (Backend(),)
    timeout: float | None = None
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    fault: FaultPolicy | None = None
    mirror: MirrorPolicy | None = None


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries allowed: ``percent`` of recent requests plus ``min_retries_per_second``."""

    percent: float = DEFAULT_BUDGET_PERCENT
    min_retries_per_second: float = DEFAULT_BUDGET_MIN_RETRIES_PER_SECOND
    ttl: float = DEFAULT_BUDGET_TTL


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive health checking: eject endpoints that keep failing."""

    consecutive_5xx: int = DEFAULT_OUTLIER_CONSECUTIVE_5XX
    consecutive_gateway_errors: int = DEFAULT_OUTLIER_CONSECUTIVE_GATEWAY_ERRORS
    interval: float = DEFAULT_OUTLIER_INTERVAL
    base_ejection_time: float = DEFAULT_OUTLIER_BASE_EJECTION_TIME
    max_ejection_percent: int = DEFAULT_OUTLIER_MAX_EJECTION_PERCENT


@dataclass(frozen=True, slots=True)
class CircuitBreakerPolicy:
    """Per-endpoint breaker: open after consecutive failures, half-open after the timeout."""

    consecutive_failures: int = DEFAULT_BREAKER_CONSECUTIVE_FAILURES
    reset_timeout: float = DEFAULT_BREAKER_RESET_TIMEOUT


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """Connection limits toward the destination."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pending: int = DEFAULT_MAX_PENDING


@dataclass(frozen=True, slots=True)
class TrafficPolicySpec:
    """How callers reach one destination service."""

    service: str
    load_balancer: str = DEFAULT_LOAD_BALANCER
    subsets: tuple[Subset, ...] = ()
    routes: tuple[Route, ...] = ()
    retry_budget: RetryBudget = field(default_factory=RetryBudget)
    outlier_detection: OutlierDetection | None = None
    circuit_breaker: CircuitBreakerPolicy | None = None
    connection_pool: ConnectionPool = field(default_factory=ConnectionPool)


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """One rule; every non-empty field must match (``()`` = field not given)."""

    name: str
    principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()  # ``<iss>/<sub>`` globs (verified JWT)
    not_request_principals: tuple[str, ...] = ()
    when: tuple[AuthzCondition, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationPolicySpec:
    """ALLOW or DENY rules for one service (or, with ``service`` None, the namespace)."""

    service: str | None = None
    action: str = DEFAULT_AUTHZ_ACTION
    rules: tuple[AuthzRule, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerAuthenticationSpec:
    """Whether plaintext callers are admitted (PERMISSIVE) or refused (STRICT)."""

    mode: str
    service: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """Local token bucket at the server; ``per_caller`` keeps one bucket per peer identity."""

    service: str
    requests_per_second: float
    burst: int
    per_caller: bool = False


Spec: TypeAlias = (
    TrafficPolicySpec
    | AuthorizationPolicySpec
    | PeerAuthenticationSpec
    | RateLimitSpec
    | RequestAuthenticationSpec
    | ExternalServiceSpec
)


@dataclass(frozen=True, slots=True)
class Resource:
    """One decoded policy document."""

    kind: str
    metadata: Metadata
    spec: Spec

    @property
    def key(self) -> tuple[str, str, str]:
        """``(kind, namespace, name)``: the identity of the resource in a store."""
        return (self.kind, self.metadata.namespace, self.metadata.name)
