"""The inbound admission: one pure decision per request, built once per snapshot.

:meth:`Admission.build` compiles what every inbound request needs from a
:class:`~meshlib.policy.engine.PolicyEngine` — the PeerAuthentication mode, the authorizer,
the local rate limiter (carried over from the previous admission when the ``RateLimit`` is
unchanged, so a new snapshot does not refill the buckets) and the refusals that never
vary. :meth:`Admission.decide` then answers one request, in this order:

1. identity: a TLS caller whose certificate failed the X.509-SVID rules is refused;
2. PeerAuthentication: a plaintext caller is refused under STRICT;
3. RequestAuthentication: a token that is present and fails verification is refused with
   401 (:mod:`meshlib.inbound.jwt`); no token leaves the request without an end user;
4. AuthorizationPolicy (on the peer and the verified end user);
5. the local RateLimit;
6. the deadline: a caller whose deadline had passed on arrival is refused.

It returns a :class:`~meshlib.inbound.peer.PeerInfo` (admitted) or a
:class:`~meshlib.inbound.refusal.Refusal`. It does no I/O and imports no framework: the
ASGI middleware and both gRPC server interceptors are thin adapters around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from meshlib.inbound.jwt import JwtFailure, JwtVerifier, RequestAuth
from meshlib.inbound.peer import PeerInfo
from meshlib.inbound.refusal import (
    AUTHZ_DENIED,
    DEADLINE_EXCEEDED,
    INVALID_PEER_CERT,
    JWT_INVALID,
    PLAINTEXT_REFUSED,
    RATE_LIMITED,
    Refusal,
)
from meshlib.policy.authz import Verdict
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.model import RateLimitSpec
from meshlib.resilience.ratelimit import RateLimiter

__all__ = ["Admission", "Decision"]

Decision = PeerInfo | Refusal

_PLAINTEXT = Refusal(
    PLAINTEXT_REFUSED,
    403,
    "UNAUTHENTICATED",
    "plaintext request refused: PeerAuthentication mode is STRICT, mutual TLS is required",
    "PeerAuthentication",
    grpc_details="plaintext call refused: PeerAuthentication mode is STRICT, "
    "mutual TLS is required",
)
_EXPIRED = Refusal(
    DEADLINE_EXCEEDED,
    504,
    "DEADLINE_EXCEEDED",
    "the caller's deadline had passed on arrival",
)


def _rate_limit_spec(engine: PolicyEngine) -> RateLimitSpec | None:
    resource = engine.snapshot.inbound.rate_limit
    if resource is None or not isinstance(resource.spec, RateLimitSpec):
        return None
    return resource.spec


class Admission:
    """What the inbound side of one snapshot decides with; immutable once built.

    Build it with :meth:`build` (off the request path, when a snapshot is installed) and
    call :meth:`decide` per request. The rate limiter's buckets are the only mutable state
    and are shared with the next admission while the ``RateLimit`` stays the same.
    """

    __slots__ = (
        "_admitted",
        "_clock",
        "_jwt_refusals",
        "_strict",
        "engine",
        "jwt",
        "limiter",
        "peer_mode",
        "service",
        "version",
    )

    engine: PolicyEngine
    version: str
    service: str
    peer_mode: str
    limiter: RateLimiter | None
    jwt: JwtVerifier | None
    _jwt_refusals: dict[str, Refusal]
    _strict: bool
    _clock: Callable[[], float]
    _admitted: dict[str | None, PeerInfo]

    def __init__(self) -> None:
        raise TypeError("use Admission.build(engine)")

    @classmethod
    def build(
        cls,
        engine: PolicyEngine,
        previous: Admission | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> Admission:
        """The admission for *engine*, keeping *previous*'s rate limiter if its spec is equal.

        Args:
            engine: the newly installed policy.
            previous: the admission of the snapshot being replaced, if any.
            clock: monotonic seconds for the rate limiter and deadline checks (tests).
        """
        self = object.__new__(cls)
        self.engine = engine
        self.version = engine.version
        self.service = engine.snapshot.service
        self.peer_mode = engine.peer_mode
        self._strict = engine.peer_mode == "STRICT"
        self._clock = clock
        spec = _rate_limit_spec(engine)
        old = previous.limiter if previous is not None else None
        if spec is None:
            self.limiter = None
        elif old is not None and old.spec == spec:
            self.limiter = old  # unchanged policy: the buckets keep their tokens
        else:
            self.limiter = RateLimiter(spec, clock=clock)
        self._admitted = {}
        self.jwt = JwtVerifier.build(engine.snapshot)
        self._jwt_refusals = {}
        return self

    def decide(
        self,
        *,
        secure: bool,
        peer: str | None,
        method: str,
        path: str,
        peer_error: str | None = None,
        deadline: float | None = None,
        headers: Iterable[Any] = (),
        query: bytes = b"",
    ) -> Decision:
        """Admit or refuse one request.

        Args:
            secure: the request came over (m)TLS.
            peer: the caller's SPIFFE ID as validated by the TLS layer; None when *secure*
                is False or the caller's certificate failed validation.
            method: upper-case HTTP method (``"POST"`` for gRPC).
            path: the request path (``"/pkg.Service/Method"`` for gRPC).
            peer_error: why a secure caller has no *peer* (shown in the refusal).
            deadline: the caller's absolute deadline on *clock*, or None.
            headers: the request headers (ASGI bytes pairs, or gRPC metadata), read only
                when a RequestAuthentication applies.
            query: the raw query string (for tokens in ``fromParams``).

        Returns:
            A :class:`PeerInfo` for an admitted request, else a :class:`Refusal`.
        """
        if secure:
            if peer is None:
                return _invalid_peer(peer_error or "no client certificate")
        elif self._strict:
            return _PLAINTEXT
        auth: RequestAuth | None = None
        if self.jwt is not None:
            result = self.jwt.verify(headers, query)
            if isinstance(result, JwtFailure):
                return self._unauthenticated(result)
            auth = result
        if auth is None:
            verdict = self.engine.authorize(peer, method, path)
        else:
            verdict = self.engine.authorize(peer, method, path, auth.principal, auth.claims)
        if not verdict.allowed:
            return _denied(verdict, peer, method, path)
        limiter = self.limiter
        if limiter is not None:
            wait = limiter.check(peer)
            if wait > 0.0:
                return self._limited(wait)
        if auth is not None:
            if deadline is not None and deadline <= self._clock():
                return _EXPIRED
            return PeerInfo(peer, peer is not None, self.version, deadline, auth)
        if deadline is None:
            info = self._admitted.get(peer)
            if info is None:  # one PeerInfo per caller and snapshot: no per-request object
                info = self._admitted.setdefault(
                    peer, PeerInfo(peer, peer is not None, self.version)
                )
                if len(self._admitted) > 4096:  # bounded: many distinct callers
                    self._admitted.clear()
            return info
        if deadline <= self._clock():
            return _EXPIRED
        return PeerInfo(peer, peer is not None, self.version, deadline)

    def _unauthenticated(self, failure: JwtFailure) -> Refusal:
        refusal = self._jwt_refusals.get(failure.reason)
        if refusal is None:  # one per reason and snapshot
            refusal = Refusal(
                JWT_INVALID,
                401,
                "UNAUTHENTICATED",
                failure.reason,
                "RequestAuthentication",
                reason=failure.reason,
                www_authenticate=f'Bearer realm="{self.service}", error="invalid_token"',
            )
            if len(self._jwt_refusals) < 64:
                self._jwt_refusals[failure.reason] = refusal
        return refusal

    def _limited(self, wait: float) -> Refusal:
        return Refusal(
            RATE_LIMITED,
            429,
            "RESOURCE_EXHAUSTED",
            "rate limited by RateLimit policy",
            "RateLimit",
            retry_after=wait,
            grpc_details=f"local rate limit of {self.service} exceeded; retry in {wait:.3f}s",
        )

    def __repr__(self) -> str:
        return f"<Admission version={self.version!r} peer_mode={self.peer_mode}>"


def _invalid_peer(reason: str) -> Refusal:
    return Refusal(
        INVALID_PEER_CERT,
        403,
        "UNAUTHENTICATED",
        f"peer certificate is not a valid X.509-SVID: {reason}",
    )


def _denied(verdict: Verdict, peer: str | None, method: str, path: str) -> Refusal:
    return Refusal(
        AUTHZ_DENIED,
        403,
        "PERMISSION_DENIED",
        "RBAC: access denied",
        "AuthorizationPolicy",
        policy=verdict.policy,
        rule=verdict.rule,
        reason=verdict.reason,
        peer=peer,
        grpc_details=f"RBAC: access denied: {verdict.reason} (peer {peer or 'plaintext'}, {path})",
    )
