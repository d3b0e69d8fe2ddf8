"""Encoding of policy resources back to their canonical JSON-able form.

``decode_resource(encode_resource(r)) == r`` holds for every decoded resource.
"""

from __future__ import annotations

from typing import Any

from meshlib.policy import model as m
from meshlib.policy.durations import format_duration
from meshlib.policy.external import encode_external_service
from meshlib.policy.requestauth import encode_conditions, encode_request_authentication

__all__ = ["encode_resource"]


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
    pairs = (
        ("principals", r.principals),
        ("namespaces", r.namespaces),
        ("requestPrincipals", r.request_principals),
        ("notRequestPrincipals", r.not_request_principals),
    )
    source = {k: list(v) for k, v in pairs if v}
    target = {k: list(v) for k, v in (("methods", r.methods), ("paths", r.paths)) if v}
    if source:
        out["from"] = source
    if target:
        out["to"] = target
    if r.when:
        out["when"] = encode_conditions(r.when)
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
    if isinstance(spec, m.RequestAuthenticationSpec):
        return encode_request_authentication(spec)
    if isinstance(spec, m.ExternalServiceSpec):
        return encode_external_service(spec)
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
