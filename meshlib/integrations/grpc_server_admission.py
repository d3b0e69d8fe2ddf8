"""The gRPC adapter of the inbound admission: read the call, decide, publish the caller.

The peer's identity comes from the call's auth context: its leaf certificate
(``x509_pem_cert``) must pass the X.509-SVID rules of
:class:`meshlib.identity.svid.PeerSVIDValidator` for this workload's trust domain. gRPC has
no per-connection hook, so the validator's cache of verdicts makes that a dictionary lookup
per call. The rest — PeerAuthentication, authorization (method ``POST``, path
``/pkg.Service/Method``), rate limit, deadline — is :meth:`meshlib.inbound.Admission.decide`,
the same decision the HTTP middleware makes.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meshlib.errors import IdentityError
from meshlib.identity.svid import PeerSVIDValidator
from meshlib.inbound.admission import Admission, Decision
from meshlib.inbound.peer import PeerInfo
from meshlib.inbound.refusal import Refusal
from meshlib.resilience.deadline import reset_deadline, set_deadline

__all__ = ["GRPC_METHOD", "admit", "current_peer", "enter", "exit_call", "remaining"]

GRPC_METHOD = "POST"
"""HTTP/2 carries every gRPC call as a POST; authorization and routing match on it."""

_PEER: contextvars.ContextVar[PeerInfo | None] = contextvars.ContextVar(
    "meshlib_grpc_peer", default=None
)
_NO_DEADLINE = 10 * 365 * 86400.0


def current_peer() -> PeerInfo | None:
    """Who is calling the gRPC handler running now (None outside a meshed handler).

    ``peer`` is the caller's SPIFFE ID, None for a plaintext caller admitted by PERMISSIVE.
    """
    return _PEER.get()


def _first(auth: Mapping[str, Sequence[bytes]], key: str) -> str | None:
    values = auth.get(key)
    return values[0].decode("utf-8", "replace") if values else None


def admit(
    admission: Admission,
    method: str,
    auth: Mapping[str, Sequence[bytes]],
    validator: PeerSVIDValidator,
    deadline: float | None = None,
    metadata: Any = (),
) -> Decision:
    """Decide one inbound call from its auth context; pure, shared by both interceptors.

    Args:
        admission: the admission of the active snapshot.
        method: ``/pkg.Service/Method``.
        auth: ``context.auth_context()``: empty (or without ``transport_security_type``
            ``ssl``) for a plaintext call.
        validator: the X.509-SVID rules for the caller's leaf (``x509_pem_cert``).
        deadline: the call's absolute deadline on the monotonic clock, or None.
        metadata: the call's invocation metadata (where a JWT is read from).
    """
    secure = _first(auth, "transport_security_type") == "ssl"
    peer: str | None = None
    reason: str | None = None
    if secure:
        pems = auth.get("x509_pem_cert", ())
        if not pems:
            reason = "no client certificate"
        else:
            try:
                peer = str(validator.validate_pem(pems[0]))
            except IdentityError as exc:
                reason = str(exc)
    return admission.decide(
        secure=secure,
        peer=peer,
        method=GRPC_METHOD,
        path=method,
        peer_error=reason,
        deadline=deadline,
        headers=metadata or (),
    )


def remaining(context: Any) -> float | None:
    """Seconds left of the call's deadline (None when it has none)."""
    left = context.time_remaining()
    # grpc reports "no deadline" as None or as a huge value, depending on the stack.
    if left is None or left > _NO_DEADLINE:
        return None
    return float(left)


def deadline_of(context: Any) -> float | None:
    """The call's absolute deadline on the monotonic clock, or None."""
    left = remaining(context)
    return None if left is None else time.monotonic() + left


def enter(peer: PeerInfo) -> tuple[contextvars.Token[Any], Any]:
    """Publish *peer* and its deadline for the handler (undo with :func:`exit_call`)."""
    return _PEER.set(peer), set_deadline(peer.deadline)


def exit_call(tokens: tuple[contextvars.Token[Any], Any]) -> None:
    """Undo :func:`enter`."""
    try:
        _PEER.reset(tokens[0])
        reset_deadline(tokens[1])
    except ValueError:  # reset from another context (a generator resumed elsewhere)
        pass


def peer_id() -> str | None:
    """The SPIFFE ID of the caller being served, or None."""
    peer = _PEER.get()
    return peer.peer if peer is not None else None


def refusal_metadata(refusal: Refusal) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a refused call."""
    return refusal.grpc_metadata
