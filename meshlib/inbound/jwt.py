"""End-user authentication in the library: the JWTs a RequestAuthentication accepts.

:meth:`JwtVerifier.build` compiles a snapshot's RequestAuthentications once — every key
set parsed into keys (inline, or the ones the control service fetched for a
``jwksUri``), every token location indexed — and :meth:`JwtVerifier.verify` answers one
request: None (no token), a :class:`RequestAuth` (verified) or a :class:`JwtFailure`
(refuse with 401). Signatures are checked by PyJWT (``pyjwt[crypto]``, see
docs/security-model.md for why); nothing here fetches anything.

The checks run in the order of Envoy's ``jwt_authn``, and failures carry its phrases, so a
request refused by a sidecar and by the library says the same: form, algorithm, issuer,
``exp``/``nbf`` (with ``clockSkew``), audiences, key (by ``kid``, of the token's key type),
signature. Only RS/PS/ES algorithms are accepted; ``none`` and HMAC never are.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from meshlib.errors import PolicyError
from meshlib.policy.jwtmodel import JWT_ALGORITHMS, JwtRule, RequestAuthenticationSpec
from meshlib.policy.snapshot import Snapshot

__all__ = ["JwtFailure", "JwtVerifier", "RequestAuth"]

MALFORMED = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
BAD_ALG = "Jwt header [alg] is not supported"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
EXPIRED = "Jwt is expired"
NOT_YET_VALID = "Jwt not yet valid"
BAD_AUDIENCE = "Audiences in Jwt are not allowed"
UNKNOWN_KEY = "Jwks doesn't have key to match kid or alg from Jwt"
BAD_SIGNATURE = "Jwt verification fails"
_KEYLESS_ALGS = ("HS256", "HS384", "HS512", "EdDSA")
_MAX_TOKEN = 16 * 1024
_MAX_UNKNOWN = 64
_MAX_SEEN = 1024
"""Tokens whose signature verified, kept per snapshot: a repeated token costs no signature
check (its times are checked on every request; its bytes are the cache key)."""


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """The verified end user of one request.

    Attributes:
        principal: ``<iss>/<sub>`` (None when the token has no ``sub``).
        issuer: the token's ``iss``.
        claims: every claim of the token (read-only).
        remove: request headers to drop before the app sees the request (the token's own,
            unless ``forwardOriginalToken``).
        add: request headers to set from ``outputClaimToHeaders``.
    """

    principal: str | None
    issuer: str
    claims: Mapping[str, Any]
    remove: tuple[str, ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    @property
    def audiences(self) -> tuple[str, ...]:
        """The token's ``aud`` as a tuple."""
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return (aud,)
        return tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()


@dataclass(frozen=True, slots=True)
class JwtFailure:
    """A token that was present and failed: refuse the request with 401."""

    reason: str
    issuer: str | None = None
    kid: str | None = None


@dataclass(slots=True)
class _Provider:
    rule: JwtRule
    source: str  # jwksUri, or "inline"
    keys: list[tuple[str | None, str, str | None, Any]] = field(default_factory=list)
    # (kid, kty/crv family, alg, key object)


def _family(alg: str) -> str:
    return {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}.get(alg, "RSA")


def _load_keys(text: str, where: str) -> list[tuple[str | None, str, str | None, Any]]:
    """Key objects of a validated key set; PolicyError (the snapshot is rejected) if PyJWT
    cannot load one."""
    from jwt import PyJWK, PyJWKError

    out = []
    for i, jwk in enumerate(json.loads(text)["keys"]):
        family = "RSA" if jwk["kty"] == "RSA" else jwk["crv"]
        alg = jwk.get("alg") or ("RS256" if family == "RSA" else _alg_of(family))
        try:
            key = PyJWK(jwk, algorithm=alg).key
        except (PyJWKError, ValueError, TypeError) as exc:
            raise PolicyError(f"{where}.keys[{i}]", f"PyJWT cannot load this key: {exc}") from exc
        out.append((jwk.get("kid"), family, jwk.get("alg"), key))
    return out


def _alg_of(curve: str) -> str:
    return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[curve]


def _strings(headers: Iterable[Any]) -> Iterable[tuple[str, str]]:
    for key, value in headers:
        k = key if isinstance(key, str) else key.decode("latin-1")
        v = value if isinstance(value, str) else value.decode("latin-1")
        yield k.lower(), v


class JwtVerifier:
    """The compiled RequestAuthentications of one snapshot. Immutable but for the record
    of unknown key ids (:meth:`unknown_keys`)."""

    __slots__ = (
        "_claim_headers",
        "_clock",
        "_headers",
        "_params",
        "_seen",
        "_unknown",
        "providers",
        "realm",
    )

    providers: list[_Provider]
    realm: str
    _headers: dict[str, list[tuple[str, _Provider]]]
    _params: dict[str, list[_Provider]]
    _unknown: dict[tuple[str, str], None]
    _seen: dict[str, tuple[_Provider, str, dict[str, Any]]]
    _clock: Callable[[], float]
    _claim_headers: frozenset[bytes]

    def __init__(self) -> None:
        raise TypeError("use JwtVerifier.build(snapshot)")

    @classmethod
    def build(
        cls, snapshot: Snapshot, *, clock: Callable[[], float] = time.time
    ) -> JwtVerifier | None:
        """The verifier for *snapshot*'s RequestAuthentications, or None when it has none.

        Raises:
            PolicyError: PyJWT is not installed, or a key set cannot be loaded.
        """
        resources = sorted(
            snapshot.inbound.request_authentication,
            key=lambda r: (r.metadata.namespace, r.metadata.name),
        )
        if not resources:
            return None
        try:
            import jwt  # noqa: F401
        except ImportError as exc:
            raise PolicyError(
                "inbound.requestAuthentication",
                "needs PyJWT: pip install 'inproc-mesh[fastapi]' (or [grpc])",
            ) from exc
        fetched = dict(snapshot.inbound.jwks)
        self = object.__new__(cls)
        self.realm = snapshot.service
        self.providers = []
        self._headers = {}
        self._params = {}
        self._unknown = {}
        self._seen = {}
        self._clock = clock
        for res in resources:
            spec = res.spec
            assert isinstance(spec, RequestAuthenticationSpec)
            for rule in spec.jwt_rules:
                text = rule.jwks if rule.jwks is not None else fetched.get(rule.jwks_uri or "")
                provider = _Provider(rule, rule.jwks_uri or "inline")
                if text is not None:
                    provider.keys = _load_keys(text, f"inbound.jwks[{provider.source}]")
                self.providers.append(provider)
                for h in rule.headers:
                    self._headers.setdefault(h.name, []).append((h.prefix, provider))
                for p in rule.from_params:
                    self._params.setdefault(p, []).append(provider)
        self._claim_headers = frozenset(
            c.header.encode("latin-1")
            for p in self.providers
            for c in p.rule.output_claim_to_headers
        )
        return self

    def rewrite(
        self, headers: Iterable[tuple[bytes, bytes]], auth: RequestAuth | None
    ) -> list[tuple[bytes, bytes]]:
        """*headers* (ASGI form) as the app must see them.

        Every ``outputClaimToHeaders`` header the caller sent is dropped (only a verified
        token sets them, as on a sidecar); for a verified *auth*, its token header is
        dropped unless ``forwardOriginalToken`` and its claim headers are set.
        """
        drop = set(self._claim_headers)
        if auth is not None:
            drop.update(h.encode("latin-1") for h in auth.remove)
        out = [(k, v) for k, v in headers if k not in drop]
        if auth is not None:
            out += [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in auth.add]
        return out

    def unknown_keys(self) -> list[tuple[str, str]]:
        """``(jwksUri, kid)`` pairs tokens named that no key set held; cleared when read."""
        found = list(self._unknown)
        self._unknown.clear()
        return found

    def _find(
        self, headers: Iterable[Any], query: bytes
    ) -> tuple[str, str | None, list[_Provider]] | None:
        for name, value in _strings(headers):
            entries = self._headers.get(name)
            if entries is None:
                continue
            prefixes = [prefix for prefix, _ in entries if value.startswith(prefix)]
            if prefixes:  # the longest prefix that fits, and the rules that read it
                prefix = max(prefixes, key=len)
                matched = [p for pf, p in entries if pf == prefix]
                return value[len(prefix) :].strip(), name, matched
        if query and self._params:
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=False):
                providers = self._params.get(name)
                if providers:
                    return value, None, providers
        return None

    def verify(self, headers: Iterable[Any], query: bytes = b"") -> RequestAuth | JwtFailure | None:
        """Verify the request's token: None without one, else the end user or the failure.

        Args:
            headers: ASGI headers (bytes pairs) or gRPC metadata (str pairs).
            query: the raw query string (HTTP only).
        """
        found = self._find(headers, query)
        if found is None:
            return None
        token, header, candidates = found
        seen = self._seen.get(token)
        if seen is not None and seen[0] in candidates:  # verified before: times only
            provider, issuer, claims = seen
            failure = _check_times(claims, provider.rule.clock_skew, self._clock())
            if failure is not None:
                return JwtFailure(failure, issuer)
            return _verified(provider.rule, issuer, claims, header)
        import jwt

        if len(token) > _MAX_TOKEN or token.count(".") != 2 or token.endswith("."):
            return JwtFailure(MALFORMED)  # an empty signature too (alg none), as Envoy
        try:
            parsed = _codecs()[0].decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return JwtFailure(MALFORMED)
        head, claims = parsed["header"], parsed["payload"]
        alg = head.get("alg")
        if alg not in JWT_ALGORITHMS:
            # Envoy knows HMAC and EdDSA but no key set of ours holds such a key: it answers
            # "no key"; anything else (none, unknown names) is an unsupported algorithm.
            return JwtFailure(UNKNOWN_KEY if alg in _KEYLESS_ALGS else BAD_ALG)
        issuer = claims.get("iss")
        providers = [p for p in candidates if p.rule.issuer == issuer]
        if not providers or not isinstance(issuer, str):
            return JwtFailure(UNKNOWN_ISSUER)
        provider = providers[0]
        rule = provider.rule
        failure = _check_times(claims, rule.clock_skew, self._clock())
        if failure is not None:
            return JwtFailure(failure, issuer)
        if rule.audiences and not _audience_ok(claims.get("aud"), rule.audiences):
            return JwtFailure(BAD_AUDIENCE, issuer)
        kid = head.get("kid")
        family = _family(alg)
        keys = [
            key
            for k_id, k_family, k_alg, key in provider.keys
            if k_family == family
            and (k_alg is None or k_alg == alg)
            and (kid is None or k_id == kid)
        ]
        if not keys:
            if (
                isinstance(kid, str)
                and provider.source != "inline"
                and len(self._unknown) < _MAX_UNKNOWN
            ):
                self._unknown[(provider.source, kid[:128])] = None
            return JwtFailure(UNKNOWN_KEY, issuer, kid if isinstance(kid, str) else None)
        jws = _codecs()[1]
        for key in keys:
            try:
                jws.decode_complete(token, key=key, algorithms=[alg])  # the signature only
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                return JwtFailure(MALFORMED, issuer)
            if len(self._seen) >= _MAX_SEEN:  # bounded: many distinct tokens
                self._seen.clear()
            self._seen[token] = (provider, issuer, claims)
            return _verified(rule, issuer, claims, header)
        return JwtFailure(BAD_SIGNATURE, issuer)


@functools.cache
def _codecs() -> tuple[Any, Any]:
    """PyJWT's JWT codec (unverified parse) and JWS codec (signature check), made once."""
    import jwt

    return jwt.PyJWT(), jwt.PyJWS()


def _check_times(claims: Mapping[str, Any], skew: float, now: float) -> str | None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if exp is not None:
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return MALFORMED
        if now > exp + skew:
            return EXPIRED
    if nbf is not None:
        if isinstance(nbf, bool) or not isinstance(nbf, int | float):
            return MALFORMED
        if now + skew < nbf:
            return NOT_YET_VALID
    return None


def _audience_ok(aud: Any, allowed: tuple[str, ...]) -> bool:
    if isinstance(aud, str):
        return aud in allowed
    return isinstance(aud, list) and any(a in allowed for a in aud if isinstance(a, str))


def _claim(claims: Mapping[str, Any], dotted: str) -> str | None:
    value: Any = claims
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def _verified(
    rule: JwtRule, issuer: str, claims: dict[str, Any], header: str | None
) -> RequestAuth:
    sub = claims.get("sub")
    add = []
    for out in rule.output_claim_to_headers:
        value = _claim(claims, out.claim)
        if value is not None:
            add.append((out.header, value))
    remove = () if rule.forward_original_token or header is None else (header,)
    return RequestAuth(
        principal=f"{issuer}/{sub}" if isinstance(sub, str) else None,
        issuer=issuer,
        claims=MappingProxyType(claims),
        remove=remove,
        add=tuple(add),
    )
