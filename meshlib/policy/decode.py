"""Decode policy documents into the model.

Decoding is strict: unknown fields are rejected (typo protection), every value is checked,
and the first problem raises :class:`~meshlib.errors.PolicyError` whose ``path`` names the
field relative to the document, e.g. ``spec.routes[2].retries.perTryTimeout``.

Every number has a lower and an upper bound (the ranges are in :mod:`meshlib.policy.model`
and docs/policy-reference.md) and every regex is checked by :mod:`meshlib.policy.regex`, so
whatever decodes can be built into the data plane's runtime objects without raising.
Decoding never raises anything but :class:`~meshlib.errors.PolicyError`, whatever the input
(huge integers, deep nesting, odd key types): error messages show values only in short form.

The work is split by concern: field readers in :mod:`~meshlib.policy.fields`, TrafficPolicy
in :mod:`~meshlib.policy.decode_traffic`, encoding in :mod:`~meshlib.policy.encode` and YAML
loading in :mod:`~meshlib.policy.documents`. This module decodes whole resources and
batches, decodes the access kinds (AuthorizationPolicy, PeerAuthentication, RateLimit), and
re-exports ``encode_resource``, ``load_documents`` and ``is_dns_label`` so
``meshlib.policy.decode`` keeps its public names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from meshlib.errors import PolicyError
from meshlib.policy import model as m
from meshlib.policy.decode_traffic import decode_traffic_policy
from meshlib.policy.documents import load_documents
from meshlib.policy.encode import encode_resource
from meshlib.policy.external import decode_external_service
from meshlib.policy.fields import (
    _NAMESPACE_GLOB,
    _at,
    _bool,
    _dns_label,
    _enum,
    _int,
    _items,
    _list,
    _mapping,
    _method,
    _number,
    _opt,
    _required,
    _show,
    _string,
    _unique,
    is_dns_label,
)
from meshlib.policy.requestauth import (
    decode_condition,
    decode_request_authentication,
    request_principal_glob,
)

__all__ = [
    "decode_documents",
    "decode_resource",
    "encode_resource",
    "is_dns_label",
    "load_documents",
]


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
    mp = _mapping(value, path, ("name", "from", "to", "when"))
    source: Mapping[str, Any] = {}
    target: Mapping[str, Any] = {}
    if "from" in mp:
        source = _mapping(
            mp["from"],
            _at(path, "from"),
            ("principals", "namespaces", "requestPrincipals", "notRequestPrincipals"),
        )
    if "to" in mp:
        target = _mapping(mp["to"], _at(path, "to"), ("methods", "paths"))
    src, dst = _at(path, "from"), _at(path, "to")
    return m.AuthzRule(
        name=_opt(mp, "name", path, _string, f"rules[{index}]"),
        principals=_items(source, "principals", src, _principal, non_empty=True),
        namespaces=_items(source, "namespaces", src, _namespace_glob, non_empty=True),
        methods=_items(target, "methods", dst, _method, non_empty=True),
        paths=_items(target, "paths", dst, _path_glob, non_empty=True),
        request_principals=_items(
            source, "requestPrincipals", src, request_principal_glob, non_empty=True
        ),
        not_request_principals=_items(
            source, "notRequestPrincipals", src, request_principal_glob, non_empty=True
        ),
        when=_items(mp, "when", path, decode_condition, non_empty=True),
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
    "TrafficPolicy": decode_traffic_policy,
    "AuthorizationPolicy": _authorization_policy,
    "PeerAuthentication": _peer_authentication,
    "RateLimit": _rate_limit,
    "RequestAuthentication": decode_request_authentication,
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
    if kind == "ExternalService":  # its spec defaults to the resource's name
        spec: m.Spec = decode_external_service(_required(mp, "spec", ""), "spec", metadata.name)
    else:
        spec = _SPEC_DECODERS[kind](_required(mp, "spec", ""), "spec")
    return m.Resource(kind=kind, metadata=metadata, spec=spec)


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
