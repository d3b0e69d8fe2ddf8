"""RequestAuthentication and the JWT fields of AuthorizationPolicy: decode, encode, refuse."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from meshlib.errors import PolicyError
from meshlib.policy import model as m
from meshlib.policy.authz import Authorizer
from meshlib.policy.decode import decode_resource, encode_resource
from tests.jwt_tokens import Signer

EC = Signer("ES256", "e1").public
RSA = Signer("RS256", "r1").public


def reqauth(**rule: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"issuer": "https://issuer.test", "jwks": {"keys": [EC, RSA]}}
    base.update(rule)
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt"},
        "spec": {"service": "api", "jwtRules": [base]},
    }


def authz(rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "meshlib.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "users"},
        "spec": {"service": "api", "rules": [rule]},
    }


def test_every_field_decodes_and_round_trips() -> None:
    """All fields decode to the model; encode → decode gives the same resource."""
    doc = reqauth(
        audiences=["api"],
        fromHeaders=[{"name": "X-Token", "prefix": "Tok "}],
        fromParams=["access_token"],
        forwardOriginalToken=True,
        outputClaimToHeaders=[{"header": "x-user", "claim": "sub"}],
        clockSkew="10s",
    )
    res = decode_resource(doc)
    assert isinstance(res.spec, m.RequestAuthenticationSpec)
    [rule] = res.spec.jwt_rules
    assert rule.from_headers == (m.JwtHeader("x-token", "Tok "),)
    assert rule.clock_skew == 10.0 and rule.forward_original_token
    assert json.loads(rule.jwks or "")["keys"][0]["kid"] == "e1"
    assert decode_resource(encode_resource(res)) == res
    uri = decode_resource(_without_jwks(jwksUri="https://issuer.test/jwks"))
    assert decode_resource(encode_resource(uri)) == uri
    assert isinstance(uri.spec, m.RequestAuthenticationSpec)
    assert uri.spec.jwt_rules[0].headers == (m.JwtHeader("authorization", "Bearer "),)


def _without_jwks(**extra: Any) -> dict[str, Any]:
    doc = reqauth(**extra)
    del doc["spec"]["jwtRules"][0]["jwks"]
    return doc


def _bad_key(**change: Any) -> dict[str, Any]:
    key = copy.deepcopy(EC)
    for k, v in change.items():
        if v is None:
            del key[k]
        else:
            key[k] = v
    return reqauth(jwks={"keys": [key]})


@pytest.mark.parametrize(
    ("doc", "path", "reason"),
    [
        (reqauth(issuer=""), "spec.jwtRules[0].issuer", "must not be empty"),
        (_without_jwks(), "spec.jwtRules[0].jwks", "exactly one of jwks and jwksUri"),
        (reqauth(jwksUri="https://x/j"), "spec.jwtRules[0].jwks", "exactly one"),
        (_without_jwks(jwksUri="ftp://x/j"), "spec.jwtRules[0].jwksUri", "http(s)://"),
        (reqauth(jwks="{not json"), "spec.jwtRules[0].jwks", "not valid JSON"),
        (reqauth(jwks={"keys": []}), "spec.jwtRules[0].jwks.keys", "at least one key"),
        (
            reqauth(jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            "spec.jwtRules[0].jwks.keys[0].kty",
            "symmetric (HMAC) keys are never accepted",
        ),
        (_bad_key(d="AAAA"), "spec.jwtRules[0].jwks.keys[0].d", "private key member"),
        (_bad_key(alg="RS256"), "spec.jwtRules[0].jwks.keys[0].alg", "signs with ES256"),
        (_bad_key(alg="HS256"), "spec.jwtRules[0].jwks.keys[0].alg", "must be one of"),
        (_bad_key(use="enc"), "spec.jwtRules[0].jwks.keys[0].use", "must be 'sig'"),
        (_bad_key(crv="P-192"), "spec.jwtRules[0].jwks.keys[0].crv", "must be one of"),
        (_bad_key(y=EC["x"]), "spec.jwtRules[0].jwks.keys[0]", "not on the curve"),
        (_bad_key(x=None), "spec.jwtRules[0].jwks.keys[0].x", "base64url"),
        (
            reqauth(jwks={"keys": [EC, EC]}),
            "spec.jwtRules[0].jwks.keys[1].kid",
            "duplicate kid",
        ),
        (
            reqauth(jwks={"keys": [dict(RSA, n="AQAB")]}),
            "spec.jwtRules[0].jwks.keys[0].n",
            "at least 2048 bits",
        ),
        (reqauth(audiences=[]), "spec.jwtRules[0].audiences", "must not be empty"),
        (
            reqauth(fromHeaders=[{"name": "bad header"}]),
            "spec.jwtRules[0].fromHeaders[0].name",
            "request header name",
        ),
        (
            reqauth(fromHeaders=[{"name": "host"}]),
            "spec.jwtRules[0].fromHeaders[0].name",
            "request header name",
        ),
        (reqauth(fromParams=["a b"]), "spec.jwtRules[0].fromParams[0]", "query parameter"),
        (
            reqauth(outputClaimToHeaders=[{"header": "x-u", "claim": "a..b"}]),
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
            "empty segment",
        ),
        (reqauth(clockSkew="1.5s"), "spec.jwtRules[0].clockSkew", "whole number of seconds"),
        (reqauth(clockSkew="10m"), "spec.jwtRules[0].clockSkew", "between 0s and 5m"),
        (reqauth(forwardOriginalToken="yes"), "spec.jwtRules[0].forwardOriginalToken", "true"),
        (reqauth(typo=1), "spec.jwtRules[0].typo", "unknown field"),
    ],
)
def test_bad_request_authentication_names_the_field(
    doc: dict[str, Any], path: str, reason: str
) -> None:
    """Every invalid field is refused with its path and the reason."""
    with pytest.raises(PolicyError) as err:
        decode_resource(doc)
    assert err.value.path == path, err.value
    assert reason in err.value.reason, err.value


def test_empty_rules_refused() -> None:
    """jwtRules is required and non-empty."""
    doc = reqauth()
    doc["spec"]["jwtRules"] = []
    with pytest.raises(PolicyError, match=r"^spec\.jwtRules: must not be empty"):
        decode_resource(doc)


@pytest.mark.parametrize(
    ("rule", "path", "reason"),
    [
        ({"from": {"requestPrincipals": ["alice"]}}, "from.requestPrincipals[0]", "<issuer>/"),
        ({"from": {"notRequestPrincipals": []}}, "from.notRequestPrincipals", "not be empty"),
        ({"when": [{"key": "request.headers[x]", "values": ["a"]}]}, "when[0].key", "claims"),
        ({"when": [{"key": "request.auth.claims[]", "values": ["a"]}]}, "when[0].key", "claims"),
        ({"when": [{"key": "request.auth.claims[g]"}]}, "when[0].values", "notValues"),
        ({"when": []}, "when", "must not be empty"),
    ],
)
def test_bad_end_user_authz_fields_name_the_field(
    rule: dict[str, Any], path: str, reason: str
) -> None:
    """requestPrincipals and when are validated like every other authz field."""
    with pytest.raises(PolicyError) as err:
        decode_resource(authz(rule))
    assert err.value.path == f"spec.rules[0].{path}", err.value
    assert reason in err.value.reason


def test_end_user_authz_semantics() -> None:
    """requestPrincipals, notRequestPrincipals and when (nested, lists, audiences) as Istio."""
    res = decode_resource(
        authz(
            {
                "name": "r",
                "from": {"requestPrincipals": ["https://iss/*"], "notRequestPrincipals": ["*/x"]},
                "when": [
                    {"key": "request.auth.claims[groups]", "values": ["adm*"]},
                    {"key": "request.auth.claims[org][tier]", "notValues": ["free"]},
                    {"key": "request.auth.audiences", "values": ["api"]},
                ],
            }
        )
    )
    assert decode_resource(encode_resource(res)) == res
    auth = Authorizer([res], service="api", namespace="default")
    claims = {"groups": ["users", "admins"], "org": {"tier": "gold"}, "aud": "api"}

    def allowed(principal: str | None, **change: Any) -> bool:
        return auth.authorize(None, "GET", "/", principal, {**claims, **change}).allowed

    assert allowed("https://iss/alice")
    assert not allowed(None)  # no token: requestPrincipals never matches
    assert not allowed("https://iss/x")  # notRequestPrincipals
    assert not allowed("https://other/alice")
    assert not allowed("https://iss/alice", groups="users")  # a string claim: a list of one
    assert allowed("https://iss/alice", groups="admins")
    assert not allowed("https://iss/alice", org={"tier": "free"})
    assert allowed("https://iss/alice", org=7)  # not a mapping: no tier, notValues holds
    assert not allowed("https://iss/alice", aud=["billing"])
    assert not allowed("https://iss/alice", groups=[1, 2])  # non-strings never match
