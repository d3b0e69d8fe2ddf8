"""meshlib_control.jwks.JwksCache against a real JWKS HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from meshlib.policy.decode import decode_documents
from meshlib_control.jwks import FETCH_TIMEOUT, JwksCache, jwks_uris
from tests.jwt_tokens import JwksServer, Signer

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resources(uri: str, namespace: str = "default"):  # type: ignore[no-untyped-def]
    return decode_documents(
        f"""
apiVersion: meshlib.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {namespace}}}
spec:
  jwtRules: [{{issuer: "https://issuer.test", jwksUri: "{uri}"}}]
"""
    )


def fetch(cache: JwksCache, uri: str) -> bool:
    async def go() -> bool:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT) as client:
            return await cache.fetch(client, uri)

    return asyncio.run(go())


def test_fetch_rotation_outage_and_bad_bodies_keep_known_keys() -> None:
    """New kid → changed; outage, non-JSON, a private key or HMAC key → the old set stays."""
    first, second = Signer("ES256", "k1"), Signer("RS256", "k2")
    with JwksServer(first) as server:
        cache = JwksCache(interval=60)
        cache.notice(resources(server.url))
        assert fetch(cache, server.url) is True
        [(uri, text)] = cache.key_sets()
        assert uri == server.url and [k["kid"] for k in json.loads(text)["keys"]] == ["k1"]
        assert fetch(cache, server.url) is False  # same keys: no snapshot refresh
        server.serve(first, second)
        assert fetch(cache, server.url) is True
        rotated = cache.key_sets()
        server.status = 503
        assert fetch(cache, server.url) is False
        assert "HTTP 503" in cache.errors[server.url]
        server.status = 200
        for body in (b"not json", json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).encode()):
            server.body = body
            assert fetch(cache, server.url) is False
        private = dict(first.public, d="AAAA")
        server.body = json.dumps({"keys": [private]}).encode()
        assert fetch(cache, server.url) is False
        assert "private key member" in cache.errors[server.url]
        assert cache.key_sets() == rotated  # the outage and the bad bodies kept the known keys
        hits = server.hits
    # The server is gone: a connection failure also keeps them.
    assert fetch(cache, server.url) is False
    assert cache.key_sets() == rotated and hits == 7


def test_unknown_kid_requests_are_rate_limited_per_uri() -> None:
    """A refresh request within min_gap of the last fetch schedules nothing."""
    clock = Clock()
    cache = JwksCache(interval=300, min_gap=5, clock=clock)
    uri = "http://127.0.0.1:9/jwks"
    cache.notice(resources(uri))
    assert cache._due() == {uri}  # new uri: fetched on the next tick
    cache._attempted[uri] = clock.now
    assert cache._due() == set()
    assert cache.request(uri) is False
    clock.now += 5
    assert cache.request(uri) is True
    assert cache._due() == {uri}
    clock.now += 300
    assert cache._due() == {uri}  # the interval


def test_only_uris_named_by_resources_reach_snapshots() -> None:
    """A uri no resource names any more drops out of keys(); namespaces are told apart."""
    cache = JwksCache(interval=60)
    cache._keys = {"https://a/jwks": "{}", "https://b/jwks": "{}"}
    cache.notice(resources("https://a/jwks"))
    assert [u for u, _ in cache.key_sets()] == ["https://a/jwks"]
    assert jwks_uris(resources("https://a/jwks", "shop"), "default") == set()
    assert jwks_uris(resources("https://a/jwks", "shop"), "shop") == {"https://a/jwks"}
