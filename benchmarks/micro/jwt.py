"""Part 1b: what end-user authentication (RequestAuthentication) adds to an inbound request.

Each row times :meth:`meshlib.inbound.Admission.decide` on real objects: a snapshot with one
RequestAuthentication whose key set holds an RS256 (2048-bit) and an ES256 key, and tokens
minted with them. "cached key set" is what the data plane does — the keys are parsed once
per snapshot, when the admission is built; "no cached key set" rebuilds the verifier (parses
the JWKS into keys) on every request, what verifying straight from the snapshot's JSON
would cost. A token seen before skips the signature check (the verifier keeps the tokens
it verified, bounded; their times are still checked per request).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from benchmarks.micro.settings import TRUST_DOMAIN, Profile
from benchmarks.micro.timing import time_sync

ISSUER = "https://issuer.bench"


def _keys() -> tuple[Any, Any, str]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, alg, public in (
        ("r1", "RS256", json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))),
        ("e1", "ES256", json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))),
    ):
        keys.append({**public, "kid": kid, "alg": alg, "use": "sig"})
    return rsa_key, ec_key, json.dumps({"keys": keys})


def measure_jwt(profile: Profile) -> list[dict[str, Any]]:
    """ns per inbound decision without a RequestAuthentication, and with one."""
    import jwt

    from meshlib.inbound.admission import Admission
    from meshlib.inbound.jwt import JwtVerifier
    from meshlib.policy.decode import decode_documents
    from meshlib.policy.engine import PolicyEngine
    from meshlib.policy.snapshot import InboundPolicy, Snapshot

    rsa_key, ec_key, jwks = _keys()
    docs = decode_documents(
        f"""
apiVersion: meshlib.io/v1
kind: RequestAuthentication
metadata: {{name: users}}
spec:
  service: backend
  jwtRules: [{{issuer: "{ISSUER}", audiences: [backend], jwks: {json.dumps(jwks)}}}]
"""
    )

    def snapshot(authn: tuple[Any, ...]) -> Snapshot:
        inbound = InboundPolicy("STRICT", (), None, authn)
        return Snapshot("v1", TRUST_DOMAIN, "backend", "default", inbound, ())

    plain = Admission.build(PolicyEngine.compile(snapshot(())))
    with_jwt_snapshot = snapshot(docs)
    with_jwt = Admission.build(PolicyEngine.compile(with_jwt_snapshot))
    claims = {"iss": ISSUER, "sub": "alice", "aud": "backend", "exp": int(time.time()) + 3600}
    peer = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/frontend"
    tokens = {
        "RS256": jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r1"}),
        "ES256": jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e1"}),
    }
    no_token = [(b"accept", b"*/*")]
    # Signature checks cost tens of µs: fewer calls per repeat keep the item time bounded.
    slow = dataclasses.replace(profile, iterations=max(50, profile.iterations // 40))
    empty = time_sync(lambda: None, profile)["median_ns"]
    rows: list[dict[str, Any]] = []

    def decide(admission: Admission, headers: list[tuple[bytes, bytes]]) -> object:
        return admission.decide(secure=True, peer=peer, method="GET", path="/", headers=headers)

    def add(what: str, fn: Any, entry: str, prof: Profile = profile) -> None:
        stats = time_sync(fn, prof, overhead=empty)
        rows.append({"layer": "jwt", "what": what, "entry_point": entry, **stats})

    add("no RequestAuthentication", lambda: decide(plain, no_token), "Admission.decide")
    add(
        "RequestAuthentication, request without a token",
        lambda: decide(with_jwt, no_token),
        "Admission.decide",
    )
    for alg, token in tokens.items():
        headers = [(b"authorization", f"Bearer {token}".encode())]
        assert decide(with_jwt, headers).auth is not None  # type: ignore[attr-defined]
        add(
            f"{alg} token seen before (verified-token cache)",
            lambda h=headers: decide(with_jwt, h),
            "Admission.decide",
        )
        verifier = with_jwt.jwt
        assert verifier is not None

        def fresh(h: list[tuple[bytes, bytes]] = headers, v: JwtVerifier = verifier) -> object:
            v._seen.clear()  # a token not seen before: the signature is checked
            return decide(with_jwt, h)

        add(f"{alg} token, cached key set", fresh, "Admission.decide", slow)

        def uncached(h: list[tuple[bytes, bytes]] = headers) -> object:
            verifier = JwtVerifier.build(with_jwt_snapshot)  # parses the JWKS again
            assert verifier is not None
            return verifier.verify(h)

        add(f"{alg} token, no cached key set", uncached, "JwtVerifier.build + verify", slow)
    return rows


def jwt_markdown(rows: list[dict[str, Any]] | None) -> list[str]:
    """The section of micro.md for :func:`measure_jwt`'s rows (nothing when absent)."""
    if not rows:
        return []
    lines = [
        "## End-user authentication (JWT) per inbound request",
        "",
        "`Admission.decide` for one mTLS request, without and with a RequestAuthentication "
        "(an RS256 2048-bit and an ES256 key; PyJWT over `cryptography`). *Cached key set*: "
        "keys parsed once per snapshot, as the data plane does; *no cached key set*: the "
        "JWKS parsed again per request; *seen before*: the same token again (the verifier "
        "keeps tokens whose signature it checked, and re-checks only their times).",
        "",
        "| what | entry point | median ns/op | min - max over repeats |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | `{r['entry_point']}` | {r['median_ns']:,.0f} | "
            f"{r['min_ns']:,.0f} - {r['max_ns']:,.0f} |"
        )
    return [*lines, ""]
