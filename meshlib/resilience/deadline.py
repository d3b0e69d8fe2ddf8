"""Deadlines: one per call, propagated hop to hop so a callee never outlives its caller.

A deadline is an absolute time on the monotonic clock. Monotonic clocks are not shared
between processes, so on the wire it travels as what was *left* when the request left, in
whole milliseconds (rounded down), in :data:`DEADLINE_HEADER`; the receiver adds it to its
own clock. Time spent on the network is not subtracted, so a callee's deadline can be a
little late, never early by more than a millisecond.

The deadline of the call being served lives in :data:`current_deadline`, a contextvar, so
outgoing calls made while serving it inherit it without being passed anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Final

__all__ = [
    "DEADLINE_HEADER",
    "MAX_DEADLINE",
    "current_deadline",
    "deadline_scope",
    "effective_deadline",
    "format_deadline_header",
    "parse_deadline_header",
    "remaining",
    "reset_deadline",
    "set_deadline",
]

DEADLINE_HEADER = "x-mesh-deadline-ms"
"""Request header: the caller's remaining time, integer milliseconds, when the request left."""

MAX_DEADLINE = 24 * 3600.0
"""Longest deadline, in seconds, accepted from a header; larger values are clamped."""

current_deadline: ContextVar[float | None] = ContextVar("meshlib_deadline", default=None)
"""Absolute (monotonic) deadline of the call being served, or None."""


class _Inherit:
    """Sentinel: take the inherited deadline from :data:`current_deadline`."""

    def __repr__(self) -> str:
        return "INHERIT"


_INHERIT: Final = _Inherit()
_MAX_DIGITS = len(str(int(MAX_DEADLINE * 1000)))


def parse_deadline_header(value: str | None, now: float) -> float | None:
    """The absolute deadline a received header value means; never raises.

    Args:
        value: the header value: ASCII digits, optionally surrounded by whitespace.
        now: the receiver's monotonic time.

    Returns:
        ``now + value / 1000``, with values above 24 h clamped to 24 h; None when the header
        is absent or not a non-negative integer. ``0`` is valid: the caller has given up.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text.lstrip("0")) > _MAX_DIGITS:
        return now + MAX_DEADLINE
    return now + min(int(text) / 1000.0, MAX_DEADLINE)


def format_deadline_header(deadline: float, now: float) -> str:
    """The header value for *deadline*: whole milliseconds left at *now*, rounded down, >= 0."""
    left = (deadline - now) * 1000.0
    if not left > 0.0:  # also NaN
        return "0"
    return str(math.floor(min(left, MAX_DEADLINE * 1000.0)))


def effective_deadline(
    route_timeout: float | None, now: float, inherited: float | _Inherit | None = _INHERIT
) -> float | None:
    """The deadline of an outgoing call: the earlier of the route's and the inherited one.

    Args:
        route_timeout: the route's timeout in seconds, or None.
        now: monotonic time the call starts.
        inherited: the deadline of the call being served; defaults to
            ``current_deadline.get()``. Pass None explicitly to ignore it.

    Returns:
        The absolute deadline, or None when neither sets one. A route timeout above
        :data:`MAX_DEADLINE` (or not a number) counts as :data:`MAX_DEADLINE`; the policy
        decoder refuses those, this only keeps hand-built plans from making ``inf``/NaN
        deadlines.
    """
    if route_timeout is not None and not route_timeout <= MAX_DEADLINE:  # also NaN
        route_timeout = MAX_DEADLINE
    if isinstance(inherited, _Inherit):
        inherited = current_deadline.get()
    own = None if route_timeout is None else now + route_timeout
    if own is None:
        return inherited
    if inherited is None:
        return own
    return min(own, inherited)


def remaining(deadline: float | None, now: float) -> float:
    """Seconds left until *deadline* (0.0 once passed; ``inf`` when there is none)."""
    if deadline is None:
        return math.inf
    return max(deadline - now, 0.0)


def set_deadline(deadline: float | None) -> Token[float | None]:
    """Make *deadline* current until :func:`reset_deadline` (for enter/exit interceptors)."""
    return current_deadline.set(deadline)


def reset_deadline(token: Token[float | None]) -> None:
    """Undo the :func:`set_deadline` that returned *token*."""
    current_deadline.reset(token)


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[float | None]:
    """Make *deadline* the :data:`current_deadline` inside the ``with`` block."""
    token = current_deadline.set(deadline)
    try:
        yield deadline
    finally:
        current_deadline.reset(token)
