"""Every numeric field has a documented range; values outside it, or hostile, are refused."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest

from meshlib.errors import PolicyError
from meshlib.policy import model as m
from meshlib.policy.decode import decode_documents, decode_resource, encode_resource
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.regex import MAX_REGEX_LENGTH, check_regex
from meshlib.policy.snapshot import (
    Endpoint,
    InboundPolicy,
    ServiceEntry,
    Snapshot,
    compute_version,
    decode_snapshot,
    encode_snapshot,
)
from meshlib.resilience.breaker import BreakerRegistry
from meshlib.resilience.budget import RetryBudget
from meshlib.resilience.deadline import effective_deadline
from meshlib.resilience.fault import decide_fault
from meshlib.resilience.outlier import OutlierDetector
from meshlib.resilience.ratelimit import RateLimiter

_STEP = re.compile(r"([A-Za-z0-9]+)|\[(\d+)\]")
R0 = "spec.routes[0]"


def traffic() -> dict[str, Any]:
    """A TrafficPolicy that sets every numeric field (each test changes one)."""
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "TrafficPolicy",
        "metadata": {"name": "orders"},
        "spec": {
            "service": "orders",
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
            "routes": [
                {
                    "name": "r",
                    "match": {"headers": [{"name": "x-v", "regex": "v[0-9]+"}]},
                    "backends": [{"subset": "v1", "weight": 10}],
                    "timeout": "2s",
                    "retries": {
                        "attempts": 2,
                        "perTryTimeout": "1s",
                        "retryOn": ["retriable-status-codes"],
                        "retriableStatusCodes": [409],
                        "backoff": {"baseInterval": "10ms", "maxInterval": "20ms"},
                        "maxReplayBytes": 10,
                    },
                    "fault": {
                        "delay": {"percent": 1, "fixedDelay": "1ms"},
                        "abort": {"percent": 1, "httpStatus": 503, "grpcStatus": 14},
                    },
                    "mirror": {"percent": 5},
                }
            ],
            "retryBudget": {"percent": 20, "minRetriesPerSecond": 10, "ttl": "10s"},
            "outlierDetection": {
                "consecutive5xx": 5,
                "consecutiveGatewayErrors": 5,
                "interval": "10s",
                "baseEjectionTime": "30s",
                "maxEjectionPercent": 50,
            },
            "circuitBreaker": {"consecutiveFailures": 5, "resetTimeout": "30s"},
            "connectionPool": {"maxConnections": 100, "maxPending": 100},
        },
    }


def rate_limit() -> dict[str, Any]:
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "RateLimit",
        "metadata": {"name": "orders"},
        "spec": {"service": "orders", "requestsPerSecond": 10, "burst": 20},
    }


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    steps: list[str | int] = [n if n else int(i) for n, i in _STEP.findall(path)]
    node: Any = doc
    for step in steps[:-1]:
        node = node[step]
    node[steps[-1]] = value
    return doc


# (document factory, path, lowest accepted, highest accepted)
INTEGERS = [
    (traffic, f"{R0}.backends[0].weight", 0, m.MAX_BACKEND_WEIGHT),
    (traffic, f"{R0}.retries.attempts", 0, m.MAX_RETRY_ATTEMPTS),
    (traffic, f"{R0}.retries.retriableStatusCodes[0]", 100, 599),
    (traffic, f"{R0}.retries.maxReplayBytes", 0, m.MAX_REPLAY_BYTES_LIMIT),
    (traffic, f"{R0}.fault.abort.httpStatus", 200, 599),
    (traffic, f"{R0}.fault.abort.grpcStatus", 1, 16),
    (traffic, "spec.outlierDetection.consecutive5xx", 1, m.MAX_CONSECUTIVE_ERRORS),
    (traffic, "spec.outlierDetection.consecutiveGatewayErrors", 1, m.MAX_CONSECUTIVE_ERRORS),
    (traffic, "spec.outlierDetection.maxEjectionPercent", 0, 100),
    (traffic, "spec.circuitBreaker.consecutiveFailures", 1, m.MAX_CONSECUTIVE_ERRORS),
    (traffic, "spec.connectionPool.maxConnections", 1, m.MAX_CONNECTIONS_LIMIT),
    (traffic, "spec.connectionPool.maxPending", 0, m.MAX_PENDING_LIMIT),
    (rate_limit, "spec.burst", 1, m.MAX_BURST),
]
NUMBERS = [
    (traffic, f"{R0}.fault.delay.percent", 0.0, 100.0),
    (traffic, f"{R0}.fault.abort.percent", 0.0, 100.0),
    (traffic, f"{R0}.mirror.percent", 0.0, 100.0),
    (traffic, "spec.retryBudget.percent", 0.0, 100.0),
    (traffic, "spec.retryBudget.minRetriesPerSecond", 0.0, m.MAX_BUDGET_MIN_RETRIES_PER_SECOND),
    (rate_limit, "spec.requestsPerSecond", m.MIN_REQUESTS_PER_SECOND, m.MAX_REQUESTS_PER_SECOND),
]
DURATIONS = [
    (traffic, f"{R0}.timeout"),
    (traffic, f"{R0}.retries.perTryTimeout"),
    (traffic, f"{R0}.fault.delay.fixedDelay"),
    (traffic, "spec.retryBudget.ttl"),
    (traffic, "spec.outlierDetection.interval"),
    (traffic, "spec.outlierDetection.baseEjectionTime"),
    (traffic, "spec.circuitBreaker.resetTimeout"),
]
ALL_NUMERIC = [(f, p) for f, p, _, _ in INTEGERS + NUMBERS]

HOSTILE_NUMBERS = [
    10**400,  # an integer float() cannot convert
    -(10**400),
    10**5000,  # an integer repr() refuses (more than 4300 digits)
    math.inf,
    -math.inf,
    math.nan,
    1e308,
    True,
    "1",
    None,
    [1],
    {"a": 1},
]


def _refused(doc: dict[str, Any], path: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        decode_resource(doc)
    assert info.value.path == path
    str(info.value)  # the message can always be printed
    return info.value


@pytest.mark.parametrize(("make", "path", "lo", "hi"), INTEGERS, ids=lambda v: str(v)[-40:])
def test_integer_ranges_accept_their_bounds_and_refuse_beyond(
    make: Any, path: str, lo: int, hi: int
) -> None:
    """Each integer field accepts its lowest and highest value and refuses one beyond each."""
    for ok in (lo, hi):
        if path.endswith("weight") and ok == 0:
            continue  # a lone zero weight fails "total weight > 0"
        decode_resource(_set(make(), path, ok))
    assert f"must be <= {hi}" in _refused(_set(make(), path, hi + 1), path).reason
    assert f"must be >= {lo}" in _refused(_set(make(), path, lo - 1), path).reason


@pytest.mark.parametrize(("make", "path", "lo", "hi"), NUMBERS, ids=lambda v: str(v)[-40:])
def test_number_ranges_accept_their_bounds_and_refuse_beyond(
    make: Any, path: str, lo: float, hi: float
) -> None:
    """Each number field accepts its bounds (integer or decimal) and refuses beyond them."""
    for ok in (lo, hi, int(hi)):
        decode_resource(_set(make(), path, ok))
    assert f"must be <= {hi:g}" in _refused(_set(make(), path, hi * 1.5 + 1), path).reason
    assert f"must be >= {lo:g}" in _refused(_set(make(), path, lo - 1), path).reason


@pytest.mark.parametrize(("make", "path"), ALL_NUMERIC, ids=lambda v: str(v)[-40:])
@pytest.mark.parametrize(
    "value", HOSTILE_NUMBERS, ids=[f"hostile{i}" for i in range(len(HOSTILE_NUMBERS))]
)
def test_hostile_numbers_are_refused_with_the_field_path(make: Any, path: str, value: Any) -> None:
    """Huge integers, infinities, NaN and wrong types give a PolicyError, never another error."""
    reason = _refused(_set(make(), path, value), path).reason
    assert len(reason) < 200


@pytest.mark.parametrize(("make", "path"), DURATIONS, ids=lambda v: str(v)[-40:])
def test_duration_ranges(make: Any, path: str) -> None:
    """Every duration accepts 1ms..24h and refuses shorter, longer, overflowing or huge text."""
    for ok in ("1ms", "24h", "1439m60s"):
        decode_resource(_set(make(), path, ok))
    assert "must be <= 24h" in _refused(_set(make(), path, "24h1ms"), path).reason
    assert "must be >= 1ms" in _refused(_set(make(), path, "0.5ms"), path).reason
    assert "must be <= 24h" in _refused(_set(make(), path, "9" * 60 + "h"), path).reason
    assert "at most 64" in _refused(_set(make(), path, "9" * 400 + "h"), path).reason
    assert "invalid duration" in _refused(_set(make(), path, "1e400s"), path).reason
    _refused(_set(make(), path, 10**400), path)


def test_burst_of_ten_to_the_400_names_the_field() -> None:
    """The issue's case: burst 10^400 is refused as `spec.burst: must be <= 1000000`."""
    error = _refused(_set(rate_limit(), "spec.burst", 10**400), "spec.burst")
    assert str(error).startswith(f"spec.burst: must be <= {m.MAX_BURST}")


def test_default_burst_follows_a_fractional_rate() -> None:
    """Without burst, a rate below one request per second still gets a bucket of 1."""
    res = decode_resource(_set(rate_limit(), "spec", {"service": "a", "requestsPerSecond": 0.01}))
    assert isinstance(res.spec, m.RateLimitSpec) and res.spec.burst == 1


def test_huge_numbers_in_yaml_are_policy_errors() -> None:
    """YAML integers over Python's 4300-digit limit and deep nesting fail as PolicyError."""
    doc = "apiVersion: meshlib.io/v1\nkind: RateLimit\nmetadata: {name: a}\n"
    with pytest.raises(PolicyError) as info:
        decode_documents(
            doc + "spec: {service: a, requestsPerSecond: 1, burst: " + "9" * 5000 + "}"
        )
    assert info.value.path == "documents[0]"
    with pytest.raises(PolicyError) as info:
        decode_documents(
            doc + "spec: {service: a, requestsPerSecond: 1, burst: 1" + "0" * 400 + "}"
        )
    assert info.value.path == "documents[0].spec.burst"
    with pytest.raises(PolicyError) as info:
        decode_documents("a: " + "[" * 50_000 + "]" * 50_000)
    assert info.value.path == "documents[0]"
    with pytest.raises(PolicyError):
        decode_documents(doc + "spec: {service: a, requestsPerSecond: .inf}")


BAD_REGEXES = [
    ("a{99999999999}", "invalid regex"),
    ("a{1001}", "<= 1000"),
    ("(a{100}){100}", "<= 1000"),
    ("(a+)+$", "fixed-width"),
    ("(a*)*b", "fixed-width"),
    ("(a|aa)*b", "fixed-width"),
    (r"(\d{1,3}\.){3}", "fixed-width"),
    ("(a|a)*b", "distinct literal"),
    ("(aa|a.)*", "distinct literal"),
    (r"(a)\1", "backreferences"),
    ("(?=(a+)+$)", "fixed-width"),
    ("(a)?(?(1)b|c)", "conditional"),
    ("(?>a+)b", "atomic"),
    ("a++", "atomic"),
    ("[", "invalid regex"),
    ("(" * 400 + ")" * 400, "nest at most"),
    ("a" * (MAX_REGEX_LENGTH + 1), "at most"),
]
GOOD_REGEXES = ["/items/[0-9]+", "v[0-9]+\\.[0-9]+", "(?i)bearer .*", "[a-z]{1,1000}", "(ab){500}"]
GOOD_REGEXES += ["(get|put)*", "/api/(v1|v2)/.*", "a{3}b?c*", "(ab|cd)+", "/(?!admin).*"]


@pytest.mark.parametrize(("regex", "reason"), BAD_REGEXES, ids=lambda v: str(v)[:30])
def test_unsafe_regexes_are_refused_in_path_and_header_matches(regex: str, reason: str) -> None:
    """Regex bombs, non-RE2 syntax and invalid regexes are refused with the field path."""
    for path, value in (
        (f"{R0}.match.path", {"regex": regex}),
        (f"{R0}.match.headers[0]", {"name": "x-v", "regex": regex}),
    ):
        where = f"{path}.regex"
        assert reason in _refused(_set(traffic(), path, value), where).reason


@pytest.mark.parametrize("regex", GOOD_REGEXES)
def test_safe_regexes_are_accepted(regex: str) -> None:
    """Ordinary regexes (classes, bounded counts, distinct alternatives) still decode."""
    check_regex(regex, "x")
    decode_resource(_set(traffic(), f"{R0}.match.path", {"regex": regex}))


def test_overlong_globs_are_refused() -> None:
    """AuthorizationPolicy globs are at most MAX_GLOB_LENGTH characters."""
    doc = {
        "apiVersion": "meshlib.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "a"},
        "spec": {"rules": [{"to": {"paths": ["/" + "*a" * m.MAX_GLOB_LENGTH]}}]},
    }
    assert "at most" in _refused(doc, "spec.rules[0].to.paths[0]").reason


def _snapshot_with(rate: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    snap = Snapshot(
        version="v",
        trust_domain="mesh.local",
        service="orders",
        namespace="default",
        inbound=InboundPolicy(rate_limit=decode_resource(rate_limit())),
        services=(
            ServiceEntry(
                name="orders",
                namespace="default",
                spiffe_id="spiffe://mesh.local/ns/default/sa/orders",
                endpoints=(
                    Endpoint(
                        "i", "10.0.0.1", 8443, (("version", "v1"),), "library", "spiffe://x/y"
                    ),
                ),
                traffic_policy=decode_resource(traffic()),
            ),
        ),
    )
    body = encode_snapshot(snap)
    body["inbound"]["rateLimit"] = rate
    body["services"][0]["trafficPolicy"] = policy
    return body


def test_snapshot_with_a_huge_burst_is_rejected_whole() -> None:
    """The library's snapshot decoder refuses burst 10^400 with its path (invariant 3)."""
    bad = _set(rate_limit(), "spec.burst", 10**400)
    with pytest.raises(PolicyError) as info:
        decode_snapshot(_snapshot_with(bad, encode_resource(decode_resource(traffic()))))
    assert info.value.path == "inbound.rateLimit.spec.burst"


def test_snapshot_with_an_unsafe_regex_or_huge_port_is_rejected() -> None:
    """Regex bombs and out-of-range ports in a snapshot fail decoding, not compilation."""
    bad = _set(traffic(), f"{R0}.match.path", {"regex": "(a+)+$"})
    with pytest.raises(PolicyError) as info:
        decode_snapshot(_snapshot_with(rate_limit(), bad))
    assert info.value.path == "services[0].trafficPolicy.spec.routes[0].match.path.regex"
    body = _snapshot_with(rate_limit(), traffic())
    body["services"][0]["endpoints"][0]["port"] = 10**5000
    with pytest.raises(PolicyError) as info:
        decode_snapshot(body)
    assert info.value.path == "services[0].endpoints[0].port"


def _extremes(pick: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The traffic and rate-limit documents with every field at its low (0) or high (1) end."""
    t, r = traffic(), rate_limit()
    for make, path, lo, hi in INTEGERS + NUMBERS:
        value = (lo, hi)[pick]
        if path.endswith("weight") and value == 0:
            value = 1
        if make is traffic:
            t = _set(t, path, value)
        else:
            r = _set(r, path, value)
    for _, path in DURATIONS:
        t = _set(t, path, ("1ms", "24h")[pick])
    t = _set(t, f"{R0}.retries.backoff", {"baseInterval": "24h", "maxInterval": "24h"})
    return t, r


@pytest.mark.parametrize("pick", [0, 1], ids=["lowest", "highest"])
def test_extreme_accepted_values_build_every_runtime_object(pick: int) -> None:
    """A snapshot with every field at an end of its range compiles and builds the data plane."""
    t, r = _extremes(pick)
    snapshot = decode_snapshot(_snapshot_with(r, t))
    engine = PolicyEngine.compile(snapshot)
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot
    assert compute_version(snapshot)
    rate = snapshot.inbound.rate_limit
    assert rate is not None and isinstance(rate.spec, m.RateLimitSpec)
    assert RateLimiter(rate.spec).check(None) == 0.0  # the bucket starts full
    service = engine.services[0]
    budget = RetryBudget.from_policy(service.retry_budget)
    budget.record_request()
    budget.try_spend()
    assert math.isfinite(budget.available())
    OutlierDetector(service.outlier_detection)
    BreakerRegistry(service.circuit_breaker).allow("10.0.0.1:8443")
    plan = service.route("GET", "/", {"x-v": "v1" * 4000})
    decision = decide_fault(plan.fault, rand=lambda: 0.0)
    assert math.isfinite(decision.delay)
    assert effective_deadline(plan.timeout, 0.0, None) == plan.timeout
