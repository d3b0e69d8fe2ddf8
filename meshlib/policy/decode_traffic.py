"""Decoding of ``TrafficPolicy`` specs: subsets, routes, retries, faults, mirroring,
retry budget, outlier detection, circuit breaker and connection pool.

Ranges are in :mod:`meshlib.policy.model` and docs/policy-reference.md.
"""

from __future__ import annotations

from typing import Any

from meshlib.errors import PolicyError
from meshlib.policy import model as m
from meshlib.policy.durations import format_duration
from meshlib.policy.fields import (
    _HEADER_NAME,
    _at,
    _bool,
    _compile_regex,
    _dns_label,
    _duration,
    _enum,
    _int,
    _items,
    _kind_of,
    _labels,
    _list,
    _mapping,
    _method,
    _number,
    _opt,
    _required,
    _show,
    _string,
    _unique,
)

__all__ = ["decode_traffic_policy"]


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


decode_traffic_policy = _traffic_policy
