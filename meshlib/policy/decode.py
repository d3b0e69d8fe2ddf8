"""Decode policy documents into the model, and encode them back to their canonical form.

Decoding is strict: unknown fields are rejected (typo protection), every value is checked,
and the first problem raises :class:`~meshlib.errors.PolicyError` whose ``path`` names the
field relative to the document, e.g. ``spec.routes[2].retries.perTryTimeout``.

Every number has a lower and an upper bound (the ranges are in :mod:`meshlib.policy.model`
and docs/policy-reference.md) and every regex is checked by :mod:`meshlib.policy.regex`, so
whatever decodes can be built into the data plane's runtime objects without raising.
Decoding never raises anything but :class:`~meshlib.errors.PolicyError`, whatever the input
(huge integers, deep nesting, odd key types): error messages show values only in short form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import yaml

from meshlib.errors import PolicyError
from meshlib.policy import model as m
from meshlib.policy.durations import format_duration, parse_duration
from meshlib.policy.regex import check_regex

__all__ = [
    "decode_documents",
    "decode_resource",
    "encode_resource",
    "is_dns_label",
    "load_documents",
]

_T = TypeVar("_T")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_METHOD = re.compile(r"[A-Z]+")
_NAMESPACE_GLOB = re.compile(r"[a-z0-9*?-]+")


def is_dns_label(value: str) -> bool:
    """True when *value* is a DNS label (``^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$``)."""
    return _DNS_LABEL.fullmatch(value) is not None


# --- primitive readers ---------------------------------------------------------------------


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, Sequence):
        return "list"
    return type(value).__name__


def _show(value: Any) -> str:
    """A short, always printable form of *value* for an error message.

    ``repr`` of an integer of more than 4300 digits raises ValueError and that of a deeply
    nested list RecursionError; a long string would flood the message.
    """
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -(10**18) < value < 10**18 else "a very large integer"
    if isinstance(value, str):
        return repr(value) if len(value) <= 64 else repr(value[:61] + "...")
    return _kind_of(value)


def _mapping(value: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"must be a mapping, got {_kind_of(value)}")
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(path, f"field names must be strings, got {_show(key)}")
        if key not in allowed:
            raise PolicyError(
                _at(path, key if len(key) <= 64 else key[:61] + "..."),
                f"unknown field (allowed: {', '.join(allowed)})",
            )
    return value


def _required(mp: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in mp:
        raise PolicyError(_at(path, key), "required")
    return mp[key]


def _list(value: Any, path: str, *, non_empty: bool = False) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise PolicyError(path, f"must be a list, got {_kind_of(value)}")
    if non_empty and not value:
        raise PolicyError(path, "must not be empty (omit the field instead)")
    return value


def _items(
    mp: Mapping[str, Any], key: str, path: str, read: Callable[[Any, str], _T], **kw: bool
) -> tuple[_T, ...]:
    if key not in mp:
        return ()
    where = _at(path, key)
    return tuple(read(v, f"{where}[{i}]") for i, v in enumerate(_list(mp[key], where, **kw)))


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(path, f"must be a string, got {_kind_of(value)}")
    if not value:
        raise PolicyError(path, "must not be empty")
    return value


def _dns_label(value: Any, path: str) -> str:
    text = _string(value, path)
    if not is_dns_label(text):
        raise PolicyError(
            path, f"must be a DNS label (lower-case letters, digits and '-'), got {_show(text)}"
        )
    return text


def _enum(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise PolicyError(path, f"must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(path, f"must be true or false, got {_kind_of(value)}")
    return value


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(path, f"must be an integer, got {_kind_of(value)}")
    if value < lo:
        raise PolicyError(path, f"must be >= {lo}, got {_show(value)}")
    if value > hi:
        raise PolicyError(path, f"must be <= {hi}, got {_show(value)}")
    return value


def _number(value: Any, path: str, lo: float, hi: float, *, above: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(path, f"must be a number, got {_kind_of(value)}")
    # Compare integers before converting them: float(10**400) raises OverflowError.
    if isinstance(value, int) and not -(2**53) <= value <= 2**53:
        bound = f">= {lo:g}" if value < 0 else f"<= {hi:g}"
        raise PolicyError(path, f"must be {bound}, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise PolicyError(path, f"must be finite, got {_show(value)}")
    if above and number <= lo:
        raise PolicyError(path, f"must be > {lo:g}, got {_show(value)}")
    if number < lo:
        raise PolicyError(path, f"must be >= {lo:g}, got {_show(value)}")
    if number > hi:
        raise PolicyError(path, f"must be <= {hi:g}, got {_show(value)}")
    return number


def _duration(value: Any, path: str) -> float:
    seconds = parse_duration(value, path)
    if seconds <= 0:
        raise PolicyError(path, "must be > 0")
    if seconds < m.MIN_DURATION:
        raise PolicyError(path, f"must be >= {format_duration(m.MIN_DURATION)}")
    if seconds > m.MAX_DURATION:
        raise PolicyError(path, f"must be <= {format_duration(m.MAX_DURATION)}")
    return seconds


def _opt(
    mp: Mapping[str, Any], key: str, path: str, read: Callable[[Any, str], _T], default: _T
) -> _T:
    return read(mp[key], _at(path, key)) if key in mp else default


def _unique(names: Sequence[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise PolicyError(f"{path}[{i}].name", f"duplicate {what} name {_show(name)}")
        seen.add(name)


def _compile_regex(value: Any, path: str) -> str:
    text = _string(value, path)
    check_regex(text, path)
    return text


# --- TrafficPolicy -------------------------------------------------------------------------


def _labels(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"must be a mapping, got {_kind_of(value)}")
    if not value:
        raise PolicyError(path, "must not be empty")
    pairs: list[tuple[str, str]] = []
    for key, label in value.items():
        if not isinstance(key, str) or not key:
            raise PolicyError(path, f"label names must be non-empty strings, got {_show(key)}")
        if not isinstance(label, str):
            raise PolicyError(_at(path, key), f"must be a string, got {_kind_of(label)}")
        pairs.append((key, label))
    return tuple(sorted(pairs))


def _subset(value: Any, path: str) -> m.Subset:
    mp = _mapping(value, path, ("name", "labels"))
    name = _dns_label(_required(mp, "name", path), _at(path, "name"))
    return m.Subset(name=name, labels=_labels(_required(mp, "labels", path), _at(path, "labels")))


def _path_match(value: Any, path: str) -> m.PathMatch:
    mp = _mapping(value, path, ("exact", "prefix", "regex"))
    if len(mp) != 1:
        raise PolicyError(path, "must set exactly one of exact, prefix, regex")
    ((kind, raw),) = mp.items()
    where = _at(path, kind)
    if kind == "regex":
        return m.PathMatch("regex", _compile_regex(raw, where))
    text = _string(raw, where)
    if not text.startswith("/"):
        raise PolicyError(where, f"must start with '/', got {_show(text)}")
    return m.PathMatch("exact" if kind == "exact" else "prefix", text)


def _header_match(value: Any, path: str) -> m.HeaderMatch:
    mp = _mapping(value, path, ("name", "exact", "regex", "present"))
    name = _string(_required(mp, "name", path), _at(path, "name")).lower()
    if not _HEADER_NAME.fullmatch(name):
        raise PolicyError(_at(path, "name"), f"invalid header name {_show(name)}")
    kinds = [k for k in ("exact", "regex", "present") if k in mp]
    if len(kinds) != 1:
        raise PolicyError(path, "must set exactly one of exact, regex, present")
    kind = kinds[0]
    where = _at(path, kind)
    if kind == "present":
        if _bool(mp[kind], where) is not True:
            raise PolicyError(where, "must be true (omit the header match to ignore the header)")
        return m.HeaderMatch(name, "present")
    if kind == "regex":
        return m.HeaderMatch(name, "regex", _compile_regex(mp[kind], where))
    if not isinstance(mp[kind], str):
        raise PolicyError(where, f"must be a string, got {_kind_of(mp[kind])}")
    return m.HeaderMatch(name, "exact", mp[kind])


def _method(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _METHOD.fullmatch(text):
        raise PolicyError(
            path, f"must be an upper-case HTTP method such as 'GET', got {_show(text)}"
        )
    return text


def _route_match(value: Any, path: str) -> m.RouteMatch:
    mp = _mapping(value, path, ("path", "methods", "headers"))
    return m.RouteMatch(
        path=_opt(mp, "path", path, _path_match, None),
        methods=_items(mp, "methods", path, _method, non_empty=True),
        headers=_items(mp, "headers", path, _header_match),
    )


def _subset_ref(value: Any, path: str, subsets: frozenset[str]) -> str:
    name = _string(value, path)
    if name not in subsets:
        known = ", ".join(sorted(subsets)) or "none"
        raise PolicyError(path, f"unknown subset {_show(name)} (defined: {known})")
    return name


def _backends(value: Any, path: str, subsets: frozenset[str]) -> tuple[m.Backend, ...]:
    out: list[m.Backend] = []
    for i, raw in enumerate(_list(value, path, non_empty=True)):
        where = f"{path}[{i}]"
        mp = _mapping(raw, where, ("subset", "weight"))
        subset = (
            _subset_ref(mp["subset"], _at(where, "subset"), subsets) if "subset" in mp else None
        )
        weight = _opt(
            mp,
            "weight",
            where,
            lambda v, p: _int(v, p, 0, m.MAX_BACKEND_WEIGHT),
            m.DEFAULT_BACKEND_WEIGHT,
        )
        out.append(m.Backend(subset=subset, weight=weight))
    if sum(b.weight for b in out) <= 0:
        raise PolicyError(path, "total weight must be > 0")
    return tuple(out)


def _backoff(value: Any, path: str) -> m.Backoff:
    mp = _mapping(value, path, ("baseInterval", "maxInterval"))
    base = _opt(mp, "baseInterval", path, _duration, m.DEFAULT_BACKOFF_BASE)
    top = _opt(mp, "maxInterval", path, _duration, max(m.DEFAULT_BACKOFF_MAX, base))
    if top < base:
        where = _at(path, "maxInterval")
        raise PolicyError(where, f"must be >= baseInterval ({format_duration(base)})")
    return m.Backoff(base_interval=base, max_interval=top)


def _retry_on(value: Any, path: str) -> str:
    return _enum(value, path, m.RETRY_ON_CONDITIONS)


def _status(value: Any, path: str) -> int:
    return _int(value, path, 100, 599)


def _retries(value: Any, path: str) -> m.RetryPolicy:
    mp = _mapping(
        value,
        path,
        (
            "attempts",
            "perTryTimeout",
            "retryOn",
            "retriableStatusCodes",
            "backoff",
            "allowNonIdempotent",
            "maxReplayBytes",
        ),
    )
    attempts = _opt(
        mp,
        "attempts",
        path,
        lambda v, p: _int(v, p, 0, m.MAX_RETRY_ATTEMPTS),
        m.DEFAULT_RETRY_ATTEMPTS,
    )
    per_try = _opt(mp, "perTryTimeout", path, _duration, None)
    retry_on = _items(mp, "retryOn", path, _retry_on) if "retryOn" in mp else m.DEFAULT_RETRY_ON
    codes = _items(mp, "retriableStatusCodes", path, _status)
    if codes and "retriable-status-codes" not in retry_on:
        raise PolicyError(
            _at(path, "retriableStatusCodes"), "requires 'retriable-status-codes' in retryOn"
        )
    if not codes and "retriable-status-codes" in retry_on:
        raise PolicyError(
            _at(path, "retryOn"), "lists retriable-status-codes but retriableStatusCodes is empty"
        )
    return m.RetryPolicy(
        attempts=attempts,
        per_try_timeout=per_try,
        retry_on=retry_on,
        retriable_status_codes=codes,
        backoff=_opt(mp, "backoff", path, _backoff, m.Backoff()),
        allow_non_idempotent=_opt(mp, "allowNonIdempotent", path, _bool, False),
        max_replay_bytes=_opt(
            mp,
            "maxReplayBytes",
            path,
            lambda v, p: _int(v, p, 0, m.MAX_REPLAY_BYTES_LIMIT),
            m.DEFAULT_MAX_REPLAY_BYTES,
        ),
    )


def _percent(value: Any, path: str) -> float:
    return _number(value, path, 0.0, 100.0)


def _delay(value: Any, path: str) -> m.DelayFault:
    mp = _mapping(value, path, ("percent", "fixedDelay"))
    percent = _percent(_required(mp, "percent", path), _at(path, "percent"))
    return m.DelayFault(
        percent, _duration(_required(mp, "fixedDelay", path), _at(path, "fixedDelay"))
    )


def _abort(value: Any, path: str) -> m.AbortFault:
    mp = _mapping(value, path, ("percent", "httpStatus", "grpcStatus"))
    return m.AbortFault(
        percent=_percent(_required(mp, "percent", path), _at(path, "percent")),
        http_status=_opt(
            mp, "httpStatus", path, lambda v, p: _int(v, p, 200, 599), m.DEFAULT_ABORT_HTTP_STATUS
        ),
        grpc_status=_opt(mp, "grpcStatus", path, lambda v, p: _int(v, p, 1, 16), None),
    )


def _fault(value: Any, path: str) -> m.FaultPolicy:
    mp = _mapping(value, path, ("delay", "abort", "headers"))
    fault = m.FaultPolicy(
        delay=_opt(mp, "delay", path, _delay, None),
        abort=_opt(mp, "abort", path, _abort, None),
        headers=_items(mp, "headers", path, _header_match),
    )
    if fault.delay is None and fault.abort is None:
        raise PolicyError(path, "must set delay or abort")
    return fault


def _route(value: Any, path: str, index: int, subsets: frozenset[str]) -> m.Route:
    mp = _mapping(
        value, path, ("name", "match", "backends", "timeout", "retries", "fault", "mirror")
    )
    mirror = None
    if "mirror" in mp:
        where = _at(path, "mirror")
        mm = _mapping(mp["mirror"], where, ("subset", "percent"))
        mirror = m.MirrorPolicy(
            subset=_subset_ref(mm["subset"], _at(where, "subset"), subsets)
            if "subset" in mm
            else None,
            percent=_opt(mm, "percent", where, _percent, m.DEFAULT_MIRROR_PERCENT),
        )
    return m.Route(
        name=_opt(mp, "name", path, _string, f"routes[{index}]"),
        match=_opt(mp, "match", path, _route_match, m.RouteMatch()),
        backends=_opt(mp, "backends", path, lambda v, p: _backends(v, p, subsets), (m.Backend(),)),
        timeout=_opt(mp, "timeout", path, _duration, None),
        retries=_opt(mp, "retries", path, _retries, m.RetryPolicy()),
        fault=_opt(mp, "fault", path, _fault, None),
        mirror=mirror,
    )


def _retry_budget(value: Any, path: str) -> m.RetryBudget:
    mp = _mapping(value, path, ("percent", "minRetriesPerSecond", "ttl"))
    return m.RetryBudget(
        percent=_opt(mp, "percent", path, _percent, m.DEFAULT_BUDGET_PERCENT),
        min_retries_per_second=_opt(
            mp,
            "minRetriesPerSecond",
            path,
            lambda v, p: _number(v, p, 0.0, m.MAX_BUDGET_MIN_RETRIES_PER_SECOND),
            m.DEFAULT_BUDGET_MIN_RETRIES_PER_SECOND,
        ),
        ttl=_opt(mp, "ttl", path, _duration, m.DEFAULT_BUDGET_TTL),
    )


def _consecutive(value: Any, path: str) -> int:
    return _int(value, path, 1, m.MAX_CONSECUTIVE_ERRORS)


def _outlier(value: Any, path: str) -> m.OutlierDetection:
    mp = _mapping(
        value,
        path,
        (
            "consecutive5xx",
            "consecutiveGatewayErrors",
            "interval",
            "baseEjectionTime",
            "maxEjectionPercent",
        ),
    )
    return m.OutlierDetection(
        consecutive_5xx=_opt(
            mp, "consecutive5xx", path, _consecutive, m.DEFAULT_OUTLIER_CONSECUTIVE_5XX
        ),
        consecutive_gateway_errors=_opt(
            mp,
            "consecutiveGatewayErrors",
            path,
            _consecutive,
            m.DEFAULT_OUTLIER_CONSECUTIVE_GATEWAY_ERRORS,
        ),
        interval=_opt(mp, "interval", path, _duration, m.DEFAULT_OUTLIER_INTERVAL),
        base_ejection_time=_opt(
            mp, "baseEjectionTime", path, _duration, m.DEFAULT_OUTLIER_BASE_EJECTION_TIME
        ),
        max_ejection_percent=_opt(
            mp,
            "maxEjectionPercent",
            path,
            lambda v, p: _int(v, p, 0, 100),
            m.DEFAULT_OUTLIER_MAX_EJECTION_PERCENT,
        ),
    )


def _breaker(value: Any, path: str) -> m.CircuitBreakerPolicy:
    mp = _mapping(value, path, ("consecutiveFailures", "resetTimeout"))
    return m.CircuitBreakerPolicy(
        consecutive_failures=_opt(
            mp, "consecutiveFailures", path, _consecutive, m.DEFAULT_BREAKER_CONSECUTIVE_FAILURES
        ),
        reset_timeout=_opt(mp, "resetTimeout", path, _duration, m.DEFAULT_BREAKER_RESET_TIMEOUT),
    )


def _pool(value: Any, path: str) -> m.ConnectionPool:
    mp = _mapping(value, path, ("maxConnections", "maxPending"))
    return m.ConnectionPool(
        max_connections=_opt(
            mp,
            "maxConnections",
            path,
            lambda v, p: _int(v, p, 1, m.MAX_CONNECTIONS_LIMIT),
            m.DEFAULT_MAX_CONNECTIONS,
        ),
        max_pending=_opt(
            mp,
            "maxPending",
            path,
            lambda v, p: _int(v, p, 0, m.MAX_PENDING_LIMIT),
            m.DEFAULT_MAX_PENDING,
        ),
    )


def _traffic_policy(value: Any, path: str) -> m.TrafficPolicySpec:
    mp = _mapping(
        value,
        path,
        (
            "service",
            "loadBalancer",
            "subsets",
            "routes",
            "retryBudget",
            "outlierDetection",
            "circuitBreaker",
            "connectionPool",
        ),
    )
    service = _dns_label(_required(mp, "service", path), _at(path, "service"))
    balancer = _opt(
        mp,
        "loadBalancer",
        path,
        lambda v, p: _enum(v, p, m.LOAD_BALANCERS),
        m.DEFAULT_LOAD_BALANCER,
    )
    subsets = _items(mp, "subsets", path, _subset)
    _unique([s.name for s in subsets], _at(path, "subsets"), "subset")
    names = frozenset(s.name for s in subsets)
    routes: tuple[m.Route, ...] = ()
    if "routes" in mp:
        where = _at(path, "routes")
        raw_routes = _list(mp["routes"], where)
        routes = tuple(_route(r, f"{where}[{i}]", i, names) for i, r in enumerate(raw_routes))
        _unique([r.name for r in routes], where, "route")
    return m.TrafficPolicySpec(
        service=service,
        load_balancer=balancer,
        subsets=subsets,
        routes=routes,
        retry_budget=_opt(mp, "retryBudget", path, _retry_budget, m.RetryBudget()),
        outlier_detection=_opt(mp, "outlierDetection", path, _outlier, None),
        circuit_breaker=_opt(mp, "circuitBreaker", path, _breaker, None),
        connection_pool=_opt(mp, "connectionPool", path, _pool, m.ConnectionPool()),
    )


# --- AuthorizationPolicy, PeerAuthentication, RateLimit ------------------------------------


def _glob(value: Any, path: str) -> str:
    text = _string(value, path)
    if len(text) > m.MAX_GLOB_LENGTH:
        raise PolicyError(path, f"must be at most {m.MAX_GLOB_LENGTH} characters")
    return text


def _principal(value: Any, path: str) -> str:
    text = _glob(value, path)
    if text != "*" and not text.startswith("spiffe://"):
        raise PolicyError(path, f"must start with 'spiffe://' or be '*', got {_show(text)}")
    return text


def _namespace_glob(value: Any, path: str) -> str:
    text = _glob(value, path)
    if not _NAMESPACE_GLOB.fullmatch(text):
        raise PolicyError(
            path, f"must be a namespace or a glob of one ('*', '?'), got {_show(text)}"
        )
    return text


def _path_glob(value: Any, path: str) -> str:
    text = _glob(value, path)
    if text != "*" and not text.startswith("/"):
        raise PolicyError(path, f"must start with '/' or be '*', got {_show(text)}")
    return text


def _authz_rule(value: Any, path: str, index: int) -> m.AuthzRule:
    mp = _mapping(value, path, ("name", "from", "to"))
    source: Mapping[str, Any] = {}
    target: Mapping[str, Any] = {}
    if "from" in mp:
        source = _mapping(mp["from"], _at(path, "from"), ("principals", "namespaces"))
    if "to" in mp:
        target = _mapping(mp["to"], _at(path, "to"), ("methods", "paths"))
    src, dst = _at(path, "from"), _at(path, "to")
    return m.AuthzRule(
        name=_opt(mp, "name", path, _string, f"rules[{index}]"),
        principals=_items(source, "principals", src, _principal, non_empty=True),
        namespaces=_items(source, "namespaces", src, _namespace_glob, non_empty=True),
        methods=_items(target, "methods", dst, _method, non_empty=True),
        paths=_items(target, "paths", dst, _path_glob, non_empty=True),
    )


def _authorization_policy(value: Any, path: str) -> m.AuthorizationPolicySpec:
    mp = _mapping(value, path, ("service", "action", "rules"))
    rules: tuple[m.AuthzRule, ...] = ()
    if "rules" in mp:
        where = _at(path, "rules")
        raw = _list(mp["rules"], where)
        rules = tuple(_authz_rule(r, f"{where}[{i}]", i) for i, r in enumerate(raw))
        _unique([r.name for r in rules], where, "rule")
    return m.AuthorizationPolicySpec(
        service=_opt(mp, "service", path, _dns_label, None),
        action=_opt(
            mp, "action", path, lambda v, p: _enum(v, p, m.AUTHZ_ACTIONS), m.DEFAULT_AUTHZ_ACTION
        ),
        rules=rules,
    )


def _peer_authentication(value: Any, path: str) -> m.PeerAuthenticationSpec:
    mp = _mapping(value, path, ("service", "mode"))
    service = _opt(mp, "service", path, _dns_label, None)
    mode = _enum(_required(mp, "mode", path), _at(path, "mode"), m.PEER_MODES)
    return m.PeerAuthenticationSpec(mode=mode, service=service)


def _rate_limit(value: Any, path: str) -> m.RateLimitSpec:
    mp = _mapping(value, path, ("service", "requestsPerSecond", "burst", "perCaller"))
    service = _dns_label(_required(mp, "service", path), _at(path, "service"))
    rps_path = _at(path, "requestsPerSecond")
    rps = _number(
        _required(mp, "requestsPerSecond", path),
        rps_path,
        m.MIN_REQUESTS_PER_SECOND,
        m.MAX_REQUESTS_PER_SECOND,
    )
    return m.RateLimitSpec(
        service=service,
        requests_per_second=rps,
        burst=_opt(
            mp, "burst", path, lambda v, p: _int(v, p, 1, m.MAX_BURST), max(1, math.ceil(rps))
        ),
        per_caller=_opt(mp, "perCaller", path, _bool, False),
    )


_SPEC_DECODERS: dict[str, Callable[[Any, str], m.Spec]] = {
    "TrafficPolicy": _traffic_policy,
    "AuthorizationPolicy": _authorization_policy,
    "PeerAuthentication": _peer_authentication,
    "RateLimit": _rate_limit,
}


def decode_resource(doc: Mapping[str, Any]) -> m.Resource:
    """Decode and validate one policy document.

    Raises:
        PolicyError: on the first problem, with the path of the field relative to *doc*.
    """
    # ``status`` is written by the control service (revision, update time) and ignored here,
    # so the output of ``meshctl get -o yaml`` can be applied again as it is.
    mp = _mapping(doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    api = _required(mp, "apiVersion", "")
    if api != m.API_VERSION:
        raise PolicyError("apiVersion", f"must be {m.API_VERSION!r}, got {_show(api)}")
    kind = _enum(_required(mp, "kind", ""), "kind", m.KINDS)
    meta = _mapping(_required(mp, "metadata", ""), "metadata", ("name", "namespace"))
    metadata = m.Metadata(
        name=_dns_label(_required(meta, "name", "metadata"), "metadata.name"),
        namespace=_opt(meta, "namespace", "metadata", _dns_label, m.DEFAULT_NAMESPACE),
    )
    spec = _SPEC_DECODERS[kind](_required(mp, "spec", ""), "spec")
    return m.Resource(kind=kind, metadata=metadata, spec=spec)


# --- encoding ------------------------------------------------------------------------------


def _encode_header(h: m.HeaderMatch) -> dict[str, Any]:
    return {"name": h.name, h.kind: True if h.kind == "present" else h.value}


def _encode_match(match: m.RouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if match.path is not None:
        out["path"] = {match.path.kind: match.path.value}
    if match.methods:
        out["methods"] = list(match.methods)
    if match.headers:
        out["headers"] = [_encode_header(h) for h in match.headers]
    return out


def _encode_subset_ref(subset: str | None, out: dict[str, Any]) -> dict[str, Any]:
    if subset is not None:
        out["subset"] = subset
    return out


def _encode_retries(r: m.RetryPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {"attempts": r.attempts}
    if r.per_try_timeout is not None:
        out["perTryTimeout"] = format_duration(r.per_try_timeout)
    out["retryOn"] = list(r.retry_on)
    if r.retriable_status_codes:
        out["retriableStatusCodes"] = list(r.retriable_status_codes)
    out["backoff"] = {
        "baseInterval": format_duration(r.backoff.base_interval),
        "maxInterval": format_duration(r.backoff.max_interval),
    }
    out["allowNonIdempotent"] = r.allow_non_idempotent
    out["maxReplayBytes"] = r.max_replay_bytes
    return out


def _encode_fault(f: m.FaultPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.delay is not None:
        out["delay"] = {
            "percent": f.delay.percent,
            "fixedDelay": format_duration(f.delay.fixed_delay),
        }
    if f.abort is not None:
        abort: dict[str, Any] = {"percent": f.abort.percent, "httpStatus": f.abort.http_status}
        if f.abort.grpc_status is not None:
            abort["grpcStatus"] = f.abort.grpc_status
        out["abort"] = abort
    if f.headers:
        out["headers"] = [_encode_header(h) for h in f.headers]
    return out


def _encode_route(r: m.Route) -> dict[str, Any]:
    out: dict[str, Any] = {"name": r.name}
    match = _encode_match(r.match)
    if match:
        out["match"] = match
    out["backends"] = [_encode_subset_ref(b.subset, {"weight": b.weight}) for b in r.backends]
    if r.timeout is not None:
        out["timeout"] = format_duration(r.timeout)
    out["retries"] = _encode_retries(r.retries)
    if r.fault is not None:
        out["fault"] = _encode_fault(r.fault)
    if r.mirror is not None:
        out["mirror"] = _encode_subset_ref(r.mirror.subset, {"percent": r.mirror.percent})
    return out


def _encode_traffic_policy(s: m.TrafficPolicySpec) -> dict[str, Any]:
    out: dict[str, Any] = {"service": s.service, "loadBalancer": s.load_balancer}
    if s.subsets:
        out["subsets"] = [{"name": x.name, "labels": dict(x.labels)} for x in s.subsets]
    if s.routes:
        out["routes"] = [_encode_route(r) for r in s.routes]
    out["retryBudget"] = {
        "percent": s.retry_budget.percent,
        "minRetriesPerSecond": s.retry_budget.min_retries_per_second,
        "ttl": format_duration(s.retry_budget.ttl),
    }
    if (od := s.outlier_detection) is not None:
        out["outlierDetection"] = {
            "consecutive5xx": od.consecutive_5xx,
            "consecutiveGatewayErrors": od.consecutive_gateway_errors,
            "interval": format_duration(od.interval),
            "baseEjectionTime": format_duration(od.base_ejection_time),
            "maxEjectionPercent": od.max_ejection_percent,
        }
    if (cb := s.circuit_breaker) is not None:
        out["circuitBreaker"] = {
            "consecutiveFailures": cb.consecutive_failures,
            "resetTimeout": format_duration(cb.reset_timeout),
        }
    out["connectionPool"] = {
        "maxConnections": s.connection_pool.max_connections,
        "maxPending": s.connection_pool.max_pending,
    }
    return out


def _encode_rule(r: m.AuthzRule) -> dict[str, Any]:
    out: dict[str, Any] = {"name": r.name}
    source = {
        k: list(v) for k, v in (("principals", r.principals), ("namespaces", r.namespaces)) if v
    }
    target = {k: list(v) for k, v in (("methods", r.methods), ("paths", r.paths)) if v}
    if source:
        out["from"] = source
    if target:
        out["to"] = target
    return out


def _encode_spec(spec: m.Spec) -> dict[str, Any]:
    if isinstance(spec, m.TrafficPolicySpec):
        return _encode_traffic_policy(spec)
    if isinstance(spec, m.AuthorizationPolicySpec):
        out: dict[str, Any] = {} if spec.service is None else {"service": spec.service}
        out["action"] = spec.action
        out["rules"] = [_encode_rule(r) for r in spec.rules]
        return out
    if isinstance(spec, m.PeerAuthenticationSpec):
        out = {} if spec.service is None else {"service": spec.service}
        out["mode"] = spec.mode
        return out
    return {
        "service": spec.service,
        "requestsPerSecond": spec.requests_per_second,
        "burst": spec.burst,
        "perCaller": spec.per_caller,
    }


def encode_resource(res: m.Resource) -> dict[str, Any]:
    """Encode *res* in its canonical JSON-able form: defaults filled in, durations as strings.

    ``decode_resource(encode_resource(r)) == r`` holds for every decoded resource.
    """
    return {
        "apiVersion": m.API_VERSION,
        "kind": res.kind,
        "metadata": {"name": res.metadata.name, "namespace": res.metadata.namespace},
        "spec": _encode_spec(res.spec),
    }


# --- documents -----------------------------------------------------------------------------


def load_documents(text: str) -> list[dict[str, Any]]:
    """Parse multi-document YAML (or JSON) text into mappings, skipping empty documents.

    Raises:
        PolicyError: a syntax error (path ``documents[i]``, reason with line and column) or a
            document that is not a mapping.
    """
    docs: list[dict[str, Any]] = []
    try:
        for raw in _safe_load_all(text):
            if raw is None:
                continue
            if not isinstance(raw, Mapping):
                raise PolicyError(
                    f"documents[{len(docs)}]", f"must be a mapping, got {_kind_of(raw)}"
                )
            docs.append(dict(raw))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"documents[{len(docs)}]", f"invalid YAML: {where}{problem}") from exc
    except RecursionError as exc:
        raise PolicyError(f"documents[{len(docs)}]", "invalid YAML: nested too deeply") from exc
    except ValueError as exc:  # an integer of more than 4300 digits (int's conversion limit)
        raise PolicyError(f"documents[{len(docs)}]", f"invalid YAML: {exc}") from exc
    return docs


def _safe_load_all(text: str) -> Iterator[Any]:
    # The C loader when PyYAML has it: faster, and it recurses in C, not in Python frames.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return iter(yaml.load_all(text, Loader=loader))


def decode_documents(text: str) -> tuple[m.Resource, ...]:
    """Load and decode every document of *text*; the whole batch fails if one is invalid.

    Raises:
        PolicyError: with the path prefixed ``documents[i].``; also when two documents have
            the same (kind, namespace, name).
    """
    out: list[m.Resource] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, doc in enumerate(load_documents(text)):
        prefix = f"documents[{i}]"
        try:
            res = decode_resource(doc)
        except PolicyError as exc:
            raise PolicyError(_at(prefix, exc.path), exc.reason) from exc
        if res.key in seen:
            raise PolicyError(
                f"{prefix}.metadata.name",
                f"duplicate of documents[{seen[res.key]}] ({'/'.join(res.key)})",
            )
        seen[res.key] = i
        out.append(res)
    return tuple(out)
