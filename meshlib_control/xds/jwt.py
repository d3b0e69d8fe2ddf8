"""End-user authentication on a sidecar: RequestAuthentication as Envoy's ``jwt_authn``.

Each JWT rule of the service's RequestAuthentications becomes one provider with its key
set inline (``local_jwks``, from the rule or as the control service fetched it for its
``jwksUri``), its locations (``Authorization: Bearer`` explicitly when the rule gives none,
since Envoy's own default also reads ``access_token``), ``forward``, ``claim_to_headers``,
``clock_skew_seconds`` and the payload written to dynamic metadata. One requirement, on
every path: any provider, or no token at all (``allow_missing``) — an invalid token is
refused with 401, a missing one passes unauthenticated, as in the library.

AuthorizationPolicy's end-user fields become RBAC principals on that metadata
(``envoy.filters.http.jwt_authn`` → ``payload``): ``requestPrincipals`` is matched as
``iss`` equal to a provider's issuer *and* ``sub`` matching what the glob leaves once that
issuer and ``/`` are consumed; ``when`` conditions match the claim as a string or as a
list holding a matching string. Part of :mod:`meshlib_control.xds.translate`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from meshlib.policy.jwtmodel import AuthzCondition, JwtRule, RequestAuthenticationSpec
from meshlib.policy.model import AuthzRule
from meshlib.policy.snapshot import Snapshot
from meshlib_control.xds.common import Json, Notes, SidecarNode

__all__ = [
    "JWT_FILTER",
    "NO_KEYS_YET",
    "PAYLOAD_KEY",
    "audience_reply_mapper",
    "claim_header_removal",
    "end_user_ids",
    "issuers",
    "jwt_filter",
    "jwt_rules",
]

JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "payload"
_JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_HEADER_MUTATION = (
    "type.googleapis.com/"
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
)
# Envoy refuses a provider with no key: until a jwksUri's first fetch succeeds its provider
# holds this one, a P-256 public key whose private half was discarded when it was made.
NO_KEYS_YET = (
    '{"keys":[{"alg":"ES256","crv":"P-256","kid":"meshlib:no-keys-yet","kty":"EC","use":"sig",'
    '"x":"3Sew583c8twUcT785Re-7w5EyGHF69yiBjcNvIpHwHY",'
    '"y":"IgFfS1KTs880Lgqz5MhEEuA5fsz2nwvLGYr2sTpdrTE"}]}'
)
_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
_NEVER: Json = {"not_id": {"any": True}}


def jwt_rules(snapshot: Snapshot, node: SidecarNode) -> list[tuple[str, JwtRule]]:
    """``(provider name, rule)`` of every JWT rule that applies, in the library's order."""
    selected = sorted(
        (
            r
            for r in snapshot.inbound.request_authentication
            if isinstance(r.spec, RequestAuthenticationSpec)
            and r.metadata.namespace == node.namespace
            and r.spec.service in (None, node.service)
        ),
        key=lambda r: (r.metadata.namespace, r.metadata.name),
    )
    out = []
    for res in selected:
        assert isinstance(res.spec, RequestAuthenticationSpec)
        for i, rule in enumerate(res.spec.jwt_rules):
            out.append((f"{res.metadata.namespace}/{res.metadata.name}/{i}", rule))
    return out


def issuers(snapshot: Snapshot, node: SidecarNode) -> tuple[str, ...]:
    """The issuers a verified token of this node can have, sorted."""
    return tuple(sorted({rule.issuer for _, rule in jwt_rules(snapshot, node)}))


def _provider(rule: JwtRule, keys: str) -> Json:
    provider: Json = {
        "issuer": rule.issuer,
        "local_jwks": {"inline_string": keys},
        "from_headers": [{"name": h.name, "value_prefix": h.prefix} for h in rule.headers],
        "forward": rule.forward_original_token,
        "payload_in_metadata": PAYLOAD_KEY,
        "clock_skew_seconds": int(rule.clock_skew),
    }
    if rule.audiences:
        provider["audiences"] = list(rule.audiences)
    if rule.from_params:
        provider["from_params"] = list(rule.from_params)
    if rule.output_claim_to_headers:
        provider["claim_to_headers"] = [
            {"header_name": c.header, "claim_name": c.claim} for c in rule.output_claim_to_headers
        ]
    return provider


def jwt_filter(snapshot: Snapshot, node: SidecarNode, notes: Notes) -> Json | None:
    """The ``jwt_authn`` filter for the node's RequestAuthentications (None without any)."""
    rules = jwt_rules(snapshot, node)
    if not rules:
        return None
    fetched = dict(snapshot.inbound.jwks)
    providers: Json = {}
    for name, rule in rules:
        where = f"inbound.requestAuthentication[{name.rsplit('/', 1)[0]}].spec.jwtRules"
        where += f"[{name.rsplit('/', 1)[1]}]"
        keys = rule.jwks if rule.jwks is not None else fetched.get(rule.jwks_uri or "")
        if rule.jwks_uri is not None:
            notes.add(
                f"{where}.jwksUri",
                "mapped",
                "Envoy cannot report a token's unknown kid: the sidecar gets a rotated key set "
                "at the control service's next refresh (MESH_CONTROL_JWKS_REFRESH), not at once",
            )
        if keys is None:
            keys = NO_KEYS_YET
            notes.add(
                f"{where}.jwksUri",
                "partial",
                "no key set fetched yet: Envoy holds a placeholder key, so an ES256 token "
                "without a kid fails as 'Jwt verification fails' (the library says 'Jwks "
                "doesn't have key to match kid or alg from Jwt')",
            )
        providers[name] = _provider(rule, keys)
        if rule.from_params and not rule.forward_original_token:
            notes.add(
                f"{where}.forwardOriginalToken",
                "partial",
                "a token read from a query parameter stays in the URL in both data planes; "
                "only a token header is removed",
            )
    requirements: list[Json] = [{"provider_name": name} for name, _ in rules]
    requirements.append({"allow_missing": {}})
    return {
        "name": JWT_FILTER,
        "typed_config": {
            "@type": _JWT_AUTHN,
            "providers": providers,
            "rules": [
                {
                    "match": {"prefix": "/"},
                    "requires": {"requires_any": {"requirements": requirements}},
                }
            ],
        },
    }


def claim_header_removal(snapshot: Snapshot, node: SidecarNode) -> list[Json]:
    """HCM early header mutations dropping caller-sent ``outputClaimToHeaders`` headers.

    Envoy sets a claim header only for a verified token; without this, a caller with no
    token could send the header itself. The library drops them the same way.
    """
    names = sorted(
        {c.header for _, rule in jwt_rules(snapshot, node) for c in rule.output_claim_to_headers}
    )
    if not names:
        return []
    return [
        {
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": _HEADER_MUTATION,
                "mutations": [{"remove": name} for name in names],
            },
        }
    ]


def audience_reply_mapper() -> Json:
    """HCM ``local_reply_config``: jwt_authn's 403 for a wrong audience becomes a 401.

    Envoy answers ``Audiences in Jwt are not allowed`` with 403 (every other token failure
    with 401); the library, as Istio's semantics ask, refuses every invalid token with 401.
    The mapper picks jwt_authn's own replies by their response code details, so RBAC's 403s
    are left alone.
    """
    expression = (
        "response.code == 403 && response.code_details.startsWith('jwt_authn_access_denied')"
    )
    return {
        "mappers": [
            {
                "filter": {
                    "extension_filter": {
                        "name": "envoy.access_loggers.extension_filters.cel",
                        "typed_config": {"@type": _CEL_FILTER, "expression": expression},
                    }
                },
                "status_code": 401,
            }
        ]
    }


# --- RBAC on the verified token -------------------------------------------------------------


def _tokens(pattern: str) -> list[str]:
    """*pattern* split into glob tokens: ``*``, ``?``, ``[...]`` classes, single characters."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 1
            if j < len(pattern):
                out.append(pattern[i : j + 1])
                i = j + 1
                continue
        out.append(c)
        i += 1
    return out


def _eat(tokens: list[str], text: str) -> set[int]:
    """The token positions a glob can be at after matching all of *text* (an NFA run)."""

    def close(states: set[int]) -> set[int]:
        out = set(states)
        for s in states:
            k = s
            while k < len(tokens) and tokens[k] == "*":
                k += 1
                out.add(k)
        return out

    states = close({0})
    for ch in text:
        nxt: set[int] = set()
        for s in states:
            if s >= len(tokens):
                continue
            tok = tokens[s]
            if tok == "*":
                nxt.add(s)
            elif (
                tok == "?"
                or (len(tok) == 1 and tok == ch)
                or (len(tok) > 1 and fnmatch.fnmatchcase(ch, tok))
            ):
                nxt.add(s + 1)
        states = close(nxt)
        if not states:
            break
    return states


def _metadata(path: Iterable[str], value: Json) -> Json:
    keys = [{"key": PAYLOAD_KEY}, *({"key": k} for k in path)]
    return {"metadata": {"filter": JWT_FILTER, "path": keys, "value": value}}


def _string_or_list(path: tuple[str, ...], regex: str) -> Json:
    match: Json = {"safe_regex": {"regex": regex}}
    return {
        "or_ids": {
            "ids": [
                _metadata(path, {"string_match": match}),
                _metadata(path, {"list_match": {"one_of": {"string_match": match}}}),
            ]
        }
    }


def _principal_ids(patterns: Iterable[str], known: tuple[str, ...]) -> Json:
    from meshlib_control.xds.inbound import glob_to_re2

    ids: list[Json] = []
    for pattern in patterns:
        tokens = _tokens(pattern)
        for issuer in known:
            rests = sorted(_eat(tokens, issuer + "/"))
            if not rests:
                continue
            sub = "|".join(f"(?:{glob_to_re2(''.join(tokens[r:]))})" for r in rests)
            ids.append(
                {
                    "and_ids": {
                        "ids": [
                            _metadata(("iss",), {"string_match": {"exact": issuer}}),
                            _metadata(("sub",), {"string_match": {"safe_regex": {"regex": sub}}}),
                        ]
                    }
                }
            )
    if not ids:
        return _NEVER
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _condition(c: AuthzCondition, known: tuple[str, ...]) -> list[Json]:
    from meshlib_control.xds.inbound import glob_to_re2

    out: list[Json] = []
    for patterns, negate in ((c.values, False), (c.not_values, True)):
        if not patterns:
            continue
        if c.claim is None:
            matcher = _principal_ids(patterns, known)
        else:
            regex = "|".join(f"(?:{glob_to_re2(p)})" for p in patterns)
            matcher = _string_or_list(c.claim, regex)
        out.append({"not_id": matcher} if negate else matcher)
    return out


def end_user_ids(rule: AuthzRule, known: tuple[str, ...]) -> list[Json]:
    """RBAC principals for *rule*'s requestPrincipals, notRequestPrincipals and when."""
    parts: list[Json] = []
    if rule.request_principals:
        parts.append(_principal_ids(rule.request_principals, known))
    if rule.not_request_principals:
        parts.append({"not_id": _principal_ids(rule.not_request_principals, known)})
    for c in rule.when:
        parts.extend(_condition(c, known))
    return parts
