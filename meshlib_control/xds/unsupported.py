"""What a sidecar cannot honour exactly: one :class:`Unsupported` per policy field affected.

DESIGN.md invariant 5: every policy field means the same in library mode and in Envoy
sidecar mode, or the difference is reported. The translator returns these with the Envoy
resources it produced; the ADS server logs them and ``meshctl`` can show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["UNSUPPORTED_KINDS", "Unsupported"]

UNSUPPORTED_KINDS = ("mapped", "partial", "ignored")
"""``mapped``: translated to the nearest Envoy feature, whose behaviour differs as the reason
says. ``partial``: honoured except for the part the reason names. ``ignored``: not applied
by the sidecar at all."""


@dataclass(frozen=True, slots=True, order=True)
class Unsupported:
    """One policy field a sidecar does not honour exactly.

    Attributes:
        path: where the field is, e.g.
            ``services[orders.default].spec.retryBudget.minRetriesPerSecond`` or
            ``inbound.rateLimit[default/orders-limit].spec.perCaller``.
        kind: one of :data:`UNSUPPORTED_KINDS`.
        reason: what Envoy does instead, in one sentence.
    """

    path: str
    kind: Literal["mapped", "partial", "ignored"]
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.reason}"
