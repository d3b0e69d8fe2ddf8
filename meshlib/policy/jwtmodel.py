"""The end-user authentication model: RequestAuthentication and the JWT parts of authz.

Pure, immutable data, as :mod:`meshlib.policy.model` (which re-exports every name here).
Decoding and validation are in :mod:`meshlib.policy.requestauth`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_JWT_HEADER",
    "DEFAULT_JWT_PREFIX",
    "JWT_ALGORITHMS",
    "MAX_CLOCK_SKEW",
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "MAX_JWT_RULES",
    "MIN_RSA_BITS",
    "AuthzCondition",
    "ClaimToHeader",
    "JwtHeader",
    "JwtRule",
    "RequestAuthenticationSpec",
]

JWT_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
)
"""The only signature algorithms accepted: asymmetric ones. ``none`` and HMAC never are."""

DEFAULT_JWT_HEADER = "authorization"
DEFAULT_JWT_PREFIX = "Bearer "
DEFAULT_CLOCK_SKEW = 30.0
"""Leeway, in seconds, when checking ``exp`` and ``nbf`` (``clockSkew``)."""
MAX_CLOCK_SKEW = 300.0
MAX_JWT_RULES = 16
"""jwtRules per RequestAuthentication."""
MAX_JWKS_KEYS = 32
MAX_JWKS_BYTES = 64 * 1024
"""Largest JWKS document accepted, inline or fetched from a ``jwksUri``."""
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class JwtHeader:
    """A request header the token is read from, after stripping ``prefix``."""

    name: str  # lower-case
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    """Copy a verified claim (a string, number or boolean) into a request header."""

    header: str  # lower-case
    claim: str


@dataclass(frozen=True, slots=True)
class JwtRule:
    """One accepted token issuer: its keys, audiences and where its token is found.

    ``jwks`` is the canonical JSON text of the inline key set; exactly one of ``jwks`` and
    ``jwks_uri`` is set. Empty ``from_headers`` and ``from_params`` mean the default,
    ``Authorization: Bearer <token>``.
    """

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None
    jwks_uri: str | None = None
    from_headers: tuple[JwtHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    clock_skew: float = DEFAULT_CLOCK_SKEW

    @property
    def headers(self) -> tuple[JwtHeader, ...]:
        """Where the token is read from (the default when neither list is given)."""
        if self.from_headers or self.from_params:
            return self.from_headers
        return (JwtHeader(DEFAULT_JWT_HEADER, DEFAULT_JWT_PREFIX),)


@dataclass(frozen=True, slots=True)
class RequestAuthenticationSpec:
    """JWT rules for one service (or, with ``service`` None, every service of the namespace)."""

    service: str | None = None
    jwt_rules: tuple[JwtRule, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzCondition:
    """One ``when`` condition of an AuthorizationPolicy rule.

    ``key`` is the attribute as written (``request.auth.claims[groups]``); ``claim`` is the
    path into the verified claims it reads (``("groups",)``; ``("aud",)`` for
    ``request.auth.audiences``, ``("azp",)`` for ``request.auth.presenter``), None for
    ``request.auth.principal`` (``<iss>/<sub>``).
    """

    key: str
    claim: tuple[str, ...] | None
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()
