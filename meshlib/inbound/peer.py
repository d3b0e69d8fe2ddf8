"""Who called, and how long they will wait: what an admitted request carries to the app."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshlib.inbound.jwt import RequestAuth

__all__ = ["PeerInfo"]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who called, and how long they will wait.

    Attributes:
        peer: the caller's SPIFFE ID, None for a plaintext caller.
        authenticated: True when the caller presented a valid SVID.
        policy_version: version of the snapshot that admitted the request.
        deadline: the caller's deadline on this process's monotonic clock, or None.
        auth: the end user, from the JWT a RequestAuthentication verified (None without
            one): ``auth.principal`` (``<iss>/<sub>``) and ``auth.claims``.
    """

    peer: str | None
    authenticated: bool
    policy_version: str
    deadline: float | None = None
    auth: RequestAuth | None = None

    def remaining(self) -> float | None:
        """Seconds left of the caller's budget (None when the caller set none)."""
        return None if self.deadline is None else self.deadline - time.monotonic()
