"""Decode and encode RequestAuthentication, and the JWT fields of AuthorizationPolicy rules.

RequestAuthentication (the shape of Istio's)::

    spec:
      service: api                 # omit for every service of the namespace
      jwtRules:
      - issuer: https://issuer.example
        audiences: [api]           # omit: any audience
        jwks: '{"keys": [...]}'    # or jwksUri: https://issuer.example/jwks (exactly one)
        fromHeaders: [{name: x-token, prefix: "Bearer "}]
        fromParams: [access_token]  # neither: Authorization: Bearer <token>
        forwardOriginalToken: false
        outputClaimToHeaders: [{header: x-user, claim: sub}]
        clockSkew: 30s             # whole seconds, 0s..5m

AuthorizationPolicy rules gain ``from.requestPrincipals`` / ``from.notRequestPrincipals``
(``<iss>/<sub>`` globs) and ``when: [{key, values, notValues}]`` on
``request.auth.principal``, ``request.auth.audiences``, ``request.auth.presenter`` and
``request.auth.claims[name][nested]``. Errors name the path, as everywhere in the decoder.
"""

from __future__ import annotations

import re
from typing import Any

from meshlib.errors import PolicyError
from meshlib.policy import jwtmodel as j
from meshlib.policy.durations import format_duration, parse_duration
from meshlib.policy.fields import (
    _HEADER_NAME,
    _at,
    _bool,
    _dns_label,
    _items,
    _list,
    _mapping,
    _opt,
    _required,
    _show,
    _string,
)
from meshlib.policy.jwks import check_jwks
from meshlib.policy.jwtmodel import MAX_CLOCK_SKEW
from meshlib.policy.model import MAX_GLOB_LENGTH

__all__ = [
    "decode_condition",
    "decode_request_authentication",
    "encode_conditions",
    "encode_request_authentication",
    "request_principal_glob",
]

_CLAIMS_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
_PARAM = re.compile(r"[A-Za-z0-9_.~-]+")
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"}
)
_CLAIM_KEYS = {
    "request.auth.principal": None,
    "request.auth.audiences": ("aud",),
    "request.auth.presenter": ("azp",),
}


def _header(value: Any, path: str) -> str:
    text = _string(value, path).lower()
    if not _HEADER_NAME.fullmatch(text) or text in _RESERVED_HEADERS:
        raise PolicyError(path, f"must be a request header name, got {_show(value)}")
    return text


def _uri(value: Any, path: str) -> str:
    text = _string(value, path)
    if not text.startswith(("https://", "http://")) or len(text) > 2048 or " " in text:
        raise PolicyError(path, f"must be an http(s):// URL, got {_show(text)}")
    return text


def _bounded(value: Any, path: str) -> str:
    text = _string(value, path)
    if len(text) > MAX_GLOB_LENGTH:
        raise PolicyError(path, f"must be at most {MAX_GLOB_LENGTH} characters")
    return text


def _location(value: Any, path: str) -> j.JwtHeader:
    mp = _mapping(value, path, ("name", "prefix"))
    prefix = mp.get("prefix", "")
    if not isinstance(prefix, str):
        raise PolicyError(_at(path, "prefix"), "must be a string")
    return j.JwtHeader(_header(_required(mp, "name", path), _at(path, "name")), prefix)


def _param(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _PARAM.fullmatch(text):
        raise PolicyError(path, f"must be a query parameter name, got {_show(text)}")
    return text


def _claim_header(value: Any, path: str) -> j.ClaimToHeader:
    mp = _mapping(value, path, ("header", "claim"))
    header = _header(_required(mp, "header", path), _at(path, "header"))
    claim = _string(_required(mp, "claim", path), _at(path, "claim"))
    if any(not part for part in claim.split(".")):
        raise PolicyError(_at(path, "claim"), "empty segment in a dotted claim name")
    return j.ClaimToHeader(header, claim)


def _clock_skew(value: Any, path: str) -> float:
    seconds = parse_duration(value, path)
    if not 0 <= seconds <= MAX_CLOCK_SKEW:
        raise PolicyError(path, f"must be between 0s and {format_duration(MAX_CLOCK_SKEW)}")
    if seconds != int(seconds):
        raise PolicyError(path, "must be a whole number of seconds")
    return seconds


def _jwt_rule(value: Any, path: str) -> j.JwtRule:
    mp = _mapping(
        value,
        path,
        (
            "issuer",
            "audiences",
            "jwks",
            "jwksUri",
            "fromHeaders",
            "fromParams",
            "forwardOriginalToken",
            "outputClaimToHeaders",
            "clockSkew",
        ),
    )
    if ("jwks" in mp) == ("jwksUri" in mp):
        raise PolicyError(_at(path, "jwks"), "give exactly one of jwks and jwksUri")
    return j.JwtRule(
        issuer=_bounded(_required(mp, "issuer", path), _at(path, "issuer")),
        audiences=_items(mp, "audiences", path, _string, non_empty=True),
        jwks=_opt(mp, "jwks", path, check_jwks, None),
        jwks_uri=_opt(mp, "jwksUri", path, _uri, None),
        from_headers=_items(mp, "fromHeaders", path, _location, non_empty=True),
        from_params=_items(mp, "fromParams", path, _param, non_empty=True),
        forward_original_token=_opt(mp, "forwardOriginalToken", path, _bool, False),
        output_claim_to_headers=_items(
            mp, "outputClaimToHeaders", path, _claim_header, non_empty=True
        ),
        clock_skew=_opt(mp, "clockSkew", path, _clock_skew, j.DEFAULT_CLOCK_SKEW),
    )


def decode_request_authentication(value: Any, path: str) -> j.RequestAuthenticationSpec:
    """Decode the ``spec`` of a RequestAuthentication.

    Raises:
        PolicyError: naming the field, e.g. ``spec.jwtRules[0].jwks.keys[1].kty``.
    """
    mp = _mapping(value, path, ("service", "jwtRules"))
    where = _at(path, "jwtRules")
    raw = _list(_required(mp, "jwtRules", path), where, non_empty=True)
    if len(raw) > j.MAX_JWT_RULES:
        raise PolicyError(where, f"at most {j.MAX_JWT_RULES} rules")
    return j.RequestAuthenticationSpec(
        service=_opt(mp, "service", path, _dns_label, None),
        jwt_rules=tuple(_jwt_rule(r, f"{where}[{i}]") for i, r in enumerate(raw)),
    )


def request_principal_glob(value: Any, path: str) -> str:
    """A ``from.requestPrincipals`` entry: ``<iss>/<sub>`` as a glob, or ``*``."""
    text = _bounded(value, path)
    if text != "*" and "/" not in text:
        raise PolicyError(
            path, f"must be '<issuer>/<subject>' (globs allowed) or '*', got {_show(text)}"
        )
    return text


def _claim_path(key: str, path: str) -> tuple[str, ...] | None:
    if key in _CLAIM_KEYS:
        return _CLAIM_KEYS[key]
    found = _CLAIMS_KEY.fullmatch(key)
    if found is None:
        raise PolicyError(
            path,
            "must be request.auth.principal, request.auth.audiences, request.auth.presenter "
            f"or request.auth.claims[<name>]…, got {_show(key)}",
        )
    return tuple(found.group(1)[1:-1].split("]["))


def decode_condition(value: Any, path: str) -> j.AuthzCondition:
    """One ``when`` entry: ``key`` with ``values`` and/or ``notValues`` (globs)."""
    mp = _mapping(value, path, ("key", "values", "notValues"))
    key = _string(_required(mp, "key", path), _at(path, "key"))
    claim = _claim_path(key, _at(path, "key"))
    values = _items(mp, "values", path, _bounded, non_empty=True)
    not_values = _items(mp, "notValues", path, _bounded, non_empty=True)
    if not values and not not_values:
        raise PolicyError(_at(path, "values"), "give values, notValues or both")
    return j.AuthzCondition(key=key, claim=claim, values=values, not_values=not_values)


# --- encoding -------------------------------------------------------------------------------


def _encode_rule(r: j.JwtRule) -> dict[str, Any]:
    out: dict[str, Any] = {"issuer": r.issuer}
    if r.audiences:
        out["audiences"] = list(r.audiences)
    if r.jwks is not None:
        out["jwks"] = r.jwks
    if r.jwks_uri is not None:
        out["jwksUri"] = r.jwks_uri
    if r.from_headers:
        out["fromHeaders"] = [{"name": h.name, "prefix": h.prefix} for h in r.from_headers]
    if r.from_params:
        out["fromParams"] = list(r.from_params)
    out["forwardOriginalToken"] = r.forward_original_token
    if r.output_claim_to_headers:
        out["outputClaimToHeaders"] = [
            {"header": c.header, "claim": c.claim} for c in r.output_claim_to_headers
        ]
    out["clockSkew"] = format_duration(r.clock_skew) if r.clock_skew else "0s"
    return out


def encode_request_authentication(spec: j.RequestAuthenticationSpec) -> dict[str, Any]:
    """The canonical form of a RequestAuthentication spec (decodes back to *spec*)."""
    out: dict[str, Any] = {} if spec.service is None else {"service": spec.service}
    out["jwtRules"] = [_encode_rule(r) for r in spec.jwt_rules]
    return out


def encode_conditions(conditions: tuple[j.AuthzCondition, ...]) -> list[dict[str, Any]]:
    """The ``when`` list of a rule."""
    out: list[dict[str, Any]] = []
    for c in conditions:
        item: dict[str, Any] = {"key": c.key}
        if c.values:
            item["values"] = list(c.values)
        if c.not_values:
            item["notValues"] = list(c.not_values)
        out.append(item)
    return out
