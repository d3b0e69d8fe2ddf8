"""Why an inbound request is refused: one value, rendered for HTTP and for gRPC.

Flags, and the statuses each protocol gives them::

    INVALID_PEER_CERT   403  UNAUTHENTICATED     TLS peer without a valid X.509-SVID
    PLAINTEXT_REFUSED   403  UNAUTHENTICATED     plaintext caller under STRICT
    AUTHZ_DENIED        403  PERMISSION_DENIED   names the deciding policy and rule
    RATE_LIMITED        429  RESOURCE_EXHAUSTED  the local token bucket is empty
    DEADLINE_EXCEEDED   504  DEADLINE_EXCEEDED   the caller's deadline passed on arrival
    JWT_INVALID         401  UNAUTHENTICATED     a token was sent and failed verification

The gRPC status is carried as its name (``grpc.StatusCode[name]``) so this module imports
no framework.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from meshlib.resilience.ratelimit import retry_after_header

__all__ = [
    "AUTHZ_DENIED",
    "DEADLINE_EXCEEDED",
    "FLAG_HEADER",
    "INVALID_PEER_CERT",
    "JWT_INVALID",
    "PLAINTEXT_REFUSED",
    "RATE_LIMITED",
    "Refusal",
]

FLAG_HEADER = b"x-mesh-flag"
"""Response header (and gRPC trailing metadata key) naming why the mesh refused a request."""

INVALID_PEER_CERT = "INVALID_PEER_CERT"
PLAINTEXT_REFUSED = "PLAINTEXT_REFUSED"
AUTHZ_DENIED = "AUTHZ_DENIED"
RATE_LIMITED = "RATE_LIMITED"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
JWT_INVALID = "JWT_INVALID"


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused request: the flag, both protocols' statuses, and what to tell the caller.

    Attributes:
        flag: one of the flags in the module docstring.
        status: the HTTP status.
        grpc_code: the name of the ``grpc.StatusCode``.
        message: the human-readable reason (HTTP ``error``).
        mechanism: the policy kind that refused (``AuthorizationPolicy``, …), or None.
        policy: ``<namespace>/<name>`` of the deciding AuthorizationPolicy, if any.
        rule: the deciding rule, if any.
        reason: the authorizer's explanation, if any.
        peer: the caller's SPIFFE ID as verified (None for plaintext or unverified).
        retry_after: seconds until the rate limit admits a request again, if rate limited.
        grpc_details: the gRPC status details (defaults to *message*).
        www_authenticate: the ``WWW-Authenticate`` challenge of a 401, if any.
    """

    flag: str
    status: int
    grpc_code: str
    message: str
    mechanism: str | None = None
    policy: str | None = None
    rule: str | None = None
    reason: str | None = None
    peer: str | None = None
    retry_after: float | None = None
    grpc_details: str = ""
    www_authenticate: str | None = None
    _body: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.grpc_details:
            object.__setattr__(self, "grpc_details", self.message)
        object.__setattr__(self, "_body", _render_body(self))

    @property
    def body(self) -> bytes:
        """The JSON body of the HTTP refusal (rendered once, when the refusal is made)."""
        return self._body

    @property
    def http_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """Extra HTTP response headers (``Retry-After``, ``WWW-Authenticate``)."""
        if self.www_authenticate is not None:
            return ((b"www-authenticate", self.www_authenticate.encode("latin-1", "replace")),)
        if self.retry_after is None:
            return ()
        return ((b"retry-after", retry_after_header(self.retry_after).encode()),)

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC trailing metadata: the flag, plus policy/rule or ``retry-after-ms``."""
        out: list[tuple[str, str]] = [(FLAG_HEADER.decode(), self.flag)]
        if self.flag == AUTHZ_DENIED:
            out += [("x-mesh-policy", self.policy or ""), ("x-mesh-rule", self.rule or "")]
        if self.retry_after is not None:
            out.append(("retry-after-ms", str(max(1, round(self.retry_after * 1000)))))
        return tuple(out)


def _render_body(refusal: Refusal) -> bytes:
    body: dict[str, Any] = {"error": refusal.message}
    if refusal.mechanism is not None:
        body["mechanism"] = refusal.mechanism
    if refusal.flag == AUTHZ_DENIED:
        body.update(
            policy=refusal.policy, rule=refusal.rule, reason=refusal.reason, peer=refusal.peer
        )
    if refusal.flag == JWT_INVALID:
        body["reason"] = refusal.reason
    if refusal.retry_after is not None:
        body["retryAfter"] = int(retry_after_header(refusal.retry_after))
    body["flag"] = refusal.flag
    return json.dumps(body).encode()
