"""The one exception tree of meshlib.

::

    MeshError
    ├── ConfigError                 bad arguments or MESH_* variables
    ├── PolicyError                 a resource or snapshot that does not decode
    │   └── (carries .path, e.g. "spec.routes[2].timeout")
    ├── IdentityError               SVID missing, expired, malformed
    │   └── PeerIdentityError       the peer presented the wrong SPIFFE ID
    ├── ControlPlaneError           the control service refused or could not be reached
    │   └── StartTimeout            Mesh.start() gave up waiting
    ├── UnknownServiceError         a URL named a mesh service the snapshot does not hold
    └── RequestError                the mesh itself failed a call (carries service, endpoint)
        ├── NoHealthyEndpoint
        ├── CircuitOpen
        ├── DeadlineExceeded
        ├── RetryBudgetExhausted
        ├── PoolOverflow
        └── FaultInjected

Every error raised by meshlib is one of these; foreign errors are mapped once, at the
boundary where they happen, with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "CircuitOpen",
    "ConfigError",
    "ControlPlaneError",
    "DeadlineExceeded",
    "FaultInjected",
    "IdentityError",
    "MeshError",
    "NoHealthyEndpoint",
    "PeerIdentityError",
    "PolicyError",
    "PoolOverflow",
    "RequestError",
    "RetryBudgetExhausted",
    "StartTimeout",
    "UnknownServiceError",
]


class MeshError(Exception):
    """Root of every error meshlib raises."""


class ConfigError(MeshError):
    """Invalid configuration passed to the library or the control service."""


class PolicyError(MeshError):
    """A resource or snapshot failed to decode; ``path`` names the offending field."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class IdentityError(MeshError):
    """This workload's identity is missing, expired or malformed."""


class PeerIdentityError(IdentityError):
    """The peer's certificate does not carry the SPIFFE ID we expected."""

    def __init__(self, message: str, *, expected: str | None, actual: str | None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(message)


class ControlPlaneError(MeshError):
    """The control service refused a request or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class StartTimeout(ControlPlaneError):
    """``Mesh.start()`` did not get an identity and a snapshot in time."""


class UnknownServiceError(MeshError):
    """A URL named a mesh service that the active snapshot does not hold."""

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(
            f"unknown mesh service {service!r}: it is not in this workload's snapshot "
            "(is it registered, and listed in the workload's dependencies?)"
        )


class RequestError(MeshError):
    """The mesh itself failed a call; ``flag`` says which mechanism answered."""

    flag = "MESH"

    def __init__(self, message: str, *, service: str, endpoint: str | None = None) -> None:
        self.service = service
        self.endpoint = endpoint
        super().__init__(message)


class NoHealthyEndpoint(RequestError):
    """Every endpoint of the destination is missing, ejected or open-circuited."""

    flag = "NO_HEALTHY_UPSTREAM"


class CircuitOpen(RequestError):
    """The endpoint's circuit breaker is open."""

    flag = "CIRCUIT_OPEN"


class DeadlineExceeded(RequestError):
    """The call's deadline passed before a response arrived."""

    flag = "DEADLINE_EXCEEDED"

    def __init__(
        self, message: str, *, service: str, endpoint: str | None = None, deadline: float | None
    ) -> None:
        self.deadline = deadline
        super().__init__(message, service=service, endpoint=endpoint)


class RetryBudgetExhausted(RequestError):
    """A retry was due but the retry budget had nothing left."""

    flag = "RETRY_BUDGET_EXHAUSTED"


class PoolOverflow(RequestError):
    """Connection-pool limits were reached; the call failed fast."""

    flag = "POOL_OVERFLOW"


class FaultInjected(RequestError):
    """An abort fault from the policy answered the call."""

    flag = "FAULT_INJECTED"
