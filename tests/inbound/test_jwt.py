"""meshlib.inbound.jwt through the Admission: real RS256/ES256 tokens, every refusal reason."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshlib.inbound import Admission, PeerInfo, Refusal
from meshlib.inbound.jwt import JwtFailure, JwtVerifier, RequestAuth
from meshlib.policy.decode import decode_documents
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import InboundPolicy, Snapshot
from tests.jwt_tokens import ISSUER, Signer, jwks_text

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
URI = "https://issuer.test/jwks"


def request_auth(rules: str) -> str:
    return f"""
apiVersion: meshlib.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  service: api
  jwtRules:
{rules}"""


def admission(docs: str, fetched: tuple[tuple[str, str], ...] = ()) -> Admission:
    resources = decode_documents(docs)
    authn = tuple(r for r in resources if r.kind == "RequestAuthentication")
    authz = tuple(r for r in resources if r.kind == "AuthorizationPolicy")
    inbound = InboundPolicy("STRICT", authz, None, authn, fetched)
    snapshot = Snapshot("v1", "mesh.local", "api", "default", inbound, ())
    return Admission.build(PolicyEngine.compile(snapshot))


def call(
    adm: Admission,
    token: str | None = None,
    *,
    headers: list[tuple[bytes, bytes]] | list[tuple[str, str]] | None = None,
    query: bytes = b"",
) -> PeerInfo | Refusal:
    if headers is None:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return adm.decide(
        secure=True, peer=ORDERS, method="GET", path="/x", headers=headers, query=query
    )


@pytest.fixture(scope="module")
def rs() -> Signer:
    return Signer("RS256", "r1")


@pytest.fixture(scope="module")
def es() -> Signer:
    return Signer("ES256", "e1")


@pytest.fixture(scope="module")
def inline(rs: Signer, es: Signer) -> Admission:
    keys = json.dumps(jwks_text(rs, es))
    return admission(
        request_auth(
            f"  - issuer: {ISSUER}\n    audiences: [api]\n    jwks: {keys}\n"
            "    outputClaimToHeaders: [{header: x-user, claim: sub}]\n    clockSkew: 5s\n"
        )
    )


def test_valid_rs256_and_es256_tokens_give_the_end_user(
    inline: Admission, rs: Signer, es: Signer
) -> None:
    """Both key types verify; the principal is <iss>/<sub> and the claims reach PeerInfo."""
    for signer in (rs, es):
        info = call(inline, signer.token("alice", groups=["admins"]))
        assert isinstance(info, PeerInfo), info
        assert info.auth is not None
        assert info.auth.principal == f"{ISSUER}/alice"
        assert info.auth.claims["groups"] == ["admins"]
        assert info.peer == ORDERS
        # The token's header is removed, the claim header set (any caller-sent copy replaced).
        assert inline.jwt is not None
        sent = [(b"authorization", b"x"), (b"x-user", b"mallory"), (b"accept", b"*/*")]
        rewritten = inline.jwt.rewrite(sent, info.auth)
        assert rewritten == [(b"accept", b"*/*"), (b"x-user", b"alice")]


def test_no_token_is_unauthenticated_not_refused(inline: Admission) -> None:
    """Without a token the request goes on with no end user."""
    info = call(inline)
    assert isinstance(info, PeerInfo) and info.auth is None
    # A caller-sent claim header never reaches the app without a verified token.
    assert inline.jwt is not None
    assert inline.jwt.rewrite([(b"x-user", b"mallory")], None) == []


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: s.token(lifetime=-60), "Jwt is expired"),
        (lambda s: s.token(nbf=time.time() + 60), "Jwt not yet valid"),
        (lambda s: s.token(iss="https://other.test"), "Jwt issuer is not configured"),
        (lambda s: s.token(aud="billing"), "Audiences in Jwt are not allowed"),
        (lambda s: s.token(headers={"kid": "nope"}), "Jwks doesn't have key to match kid"),
        (lambda s: s.token()[:-6] + "AAAAAA", "Jwt verification fails"),
        (lambda s: "not-a-jwt", "Jwt is not in the form"),
    ],
)
def test_each_invalid_token_is_refused_401(
    inline: Admission, es: Signer, make: Callable[[Signer], str], reason: str
) -> None:
    """An invalid token: 401, UNAUTHENTICATED, WWW-Authenticate and the reason in the body."""
    refusal = call(inline, make(es))
    assert isinstance(refusal, Refusal), refusal
    assert (refusal.status, refusal.grpc_code, refusal.flag) == (
        401,
        "UNAUTHENTICATED",
        "JWT_INVALID",
    )
    assert refusal.message.startswith(reason)
    assert (
        dict(refusal.http_headers)[b"www-authenticate"]
        == b'Bearer realm="api", error="invalid_token"'
    )
    assert json.loads(refusal.body)["reason"].startswith(reason)


def test_alg_none_hmac_with_public_key_and_wrong_key_type_are_refused(
    inline: Admission, rs: Signer, es: Signer
) -> None:
    """alg none, HS256 keyed with the RSA public key, and an RS256 token naming the EC kid."""
    claims = {"iss": ISSUER, "sub": "eve", "aud": "api", "exp": int(time.time()) + 60}
    unsigned = pyjwt.encode(claims, "", algorithm="none")
    pem = rs.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = pyjwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "r1"}).encode())
    payload = pyjwt.utils.base64url_encode(json.dumps(claims).encode())
    signing_input = header + b"." + payload
    mac = pyjwt.utils.base64url_encode(hmac.new(pem, signing_input, hashlib.sha256).digest())
    hs256 = (signing_input + b"." + mac).decode()
    wrong_type = rs.token(headers={"kid": "e1"})  # RS256 token, names the EC key
    for token, reason in (
        (unsigned, "Jwt is not in the form"),  # an empty signature, as Envoy says
        (unsigned + "c2ln", "Jwt header [alg] is not supported"),
        (hs256, "Jwks doesn't have key"),  # as Envoy says: no HMAC key is ever held
        (wrong_type, "Jwks doesn't have key"),
    ):
        refusal = call(inline, token)
        assert isinstance(refusal, Refusal) and refusal.status == 401, token
        assert refusal.message.startswith(reason)


def test_clock_skew_leeway(inline: Admission, es: Signer) -> None:
    """Expired 3 s ago passes with clockSkew 5s; 30 s ago does not."""
    assert isinstance(call(inline, es.token(lifetime=-3)), PeerInfo)
    assert isinstance(call(inline, es.token(lifetime=-30)), Refusal)


def test_other_locations_and_forwarding(es: Signer) -> None:
    """fromHeaders with a prefix, fromParams, and forwardOriginalToken keep the token."""
    keys = json.dumps(jwks_text(es))
    adm = admission(
        request_auth(
            f"  - issuer: {ISSUER}\n    jwks: {keys}\n    forwardOriginalToken: true\n"
            "    fromHeaders: [{name: x-token, prefix: 'Tok '}]\n    fromParams: [access_token]\n"
        )
    )
    token = es.token()
    info = call(adm, headers=[(b"x-token", f"Tok {token}".encode())])
    assert isinstance(info, PeerInfo) and info.auth is not None
    assert info.auth.remove == ()
    info = call(adm, headers=[], query=f"a=1&access_token={token}".encode())
    assert isinstance(info, PeerInfo) and info.auth is not None
    # Authorization: Bearer is not a location of this rule: ignored, no end user.
    info = call(adm, token)
    assert isinstance(info, PeerInfo) and info.auth is None
    # gRPC metadata (str pairs) is read the same way.
    info = call(adm, headers=[("x-token", f"Tok {token}")])
    assert isinstance(info, PeerInfo) and info.auth is not None


def test_fetched_key_set_and_unknown_kid_record(es: Signer) -> None:
    """A jwksUri rule verifies with the snapshot's fetched keys; an unknown kid is recorded."""
    docs = request_auth(f"  - issuer: {ISSUER}\n    jwksUri: {URI}\n")
    missing = admission(docs)
    refusal = call(missing, es.token())
    assert isinstance(refusal, Refusal) and refusal.message.startswith("Jwks doesn't have key")
    assert missing.jwt is not None and missing.jwt.unknown_keys() == [(URI, "e1")]
    assert missing.jwt.unknown_keys() == []  # cleared when read
    fetched = admission(docs, ((URI, jwks_text(es)),))
    assert isinstance(call(fetched, es.token()), PeerInfo)


def test_authorization_on_principal_and_claims(es: Signer) -> None:
    """requestPrincipals demands a token (403 without); when on a nested claim allows/denies."""
    keys = json.dumps(jwks_text(es))
    docs = (
        request_auth(f"  - issuer: {ISSUER}\n    jwks: {keys}\n")
        + f"""
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: users}}
spec:
  service: api
  rules:
  - name: admins
    from: {{requestPrincipals: ["{ISSUER}/*"]}}
    when:
    - {{key: "request.auth.claims[groups]", values: [admins]}}
    - {{key: "request.auth.claims[org][tier]", notValues: [free]}}
"""
    )
    adm = admission(docs)
    denied = call(adm)
    assert isinstance(denied, Refusal) and denied.status == 403
    assert isinstance(call(adm, es.token(groups=["admins"], org={"tier": "gold"})), PeerInfo)
    for token in (es.token(groups=["users"]), es.token(groups=["admins"], org={"tier": "free"})):
        refused = call(adm, token)
        assert isinstance(refused, Refusal) and refused.status == 403


def test_no_request_authentication_builds_no_verifier() -> None:
    """A snapshot without RequestAuthentication costs nothing per request."""
    snapshot = Snapshot("v1", "mesh.local", "api", "default", InboundPolicy(), ())
    assert JwtVerifier.build(snapshot) is None


def test_a_verified_token_is_remembered_but_its_times_are_checked_again(es: Signer) -> None:
    """The second use of a token skips the signature check, not the expiry check."""
    keys = json.dumps(jwks_text(es))
    snapshot = admission(request_auth(f"  - issuer: {ISSUER}\n    jwks: {keys}\n")).engine.snapshot
    now = [time.time()]
    verifier = JwtVerifier.build(snapshot, clock=lambda: now[0])
    assert verifier is not None
    token = es.token(lifetime=60)
    headers = [(b"authorization", f"Bearer {token}".encode())]
    assert isinstance(verifier.verify(headers), RequestAuth)
    assert token in verifier._seen
    assert isinstance(verifier.verify(headers), RequestAuth)
    now[0] += 120  # past exp + clockSkew
    failure = verifier.verify(headers)
    assert isinstance(failure, JwtFailure) and failure.reason == "Jwt is expired"
    # A token seen in another location of another rule is not taken from the cache.
    assert verifier.verify([(b"x-other", f"Bearer {token}".encode())]) is None


def test_two_rules_on_one_header_with_different_prefixes(rs: Signer, es: Signer) -> None:
    """The longest prefix that fits picks the rules that read the value."""
    keys_rs, keys_es = json.dumps(jwks_text(rs)), json.dumps(jwks_text(es))
    adm = admission(
        request_auth(
            f"  - issuer: bare\n    jwks: {keys_rs}\n    fromHeaders: [{{name: x-t}}]\n"
            f"  - issuer: {ISSUER}\n    jwks: {keys_es}\n"
            "    fromHeaders: [{name: x-t, prefix: 'Bearer '}]\n"
        )
    )
    bearer = call(adm, headers=[(b"x-t", f"Bearer {es.token()}".encode())])
    assert isinstance(bearer, PeerInfo) and bearer.auth is not None
    assert bearer.auth.issuer == ISSUER
    bare = call(adm, headers=[(b"x-t", rs.token(iss="bare").encode())])
    assert isinstance(bare, PeerInfo) and bare.auth is not None and bare.auth.issuer == "bare"
