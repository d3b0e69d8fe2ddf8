"""Duration strings of the policy model: ``"250ms"``, ``"2s"``, ``"1.5s"``, ``"1m30s"``, ``"1h"``.

A duration is one or more ``<number><unit>`` terms (units ``h``, ``m``, ``s``, ``ms``), summed,
as in Go's ``time.ParseDuration`` without signs. Numbers are plain decimals. Internally a
duration is a float number of seconds. The text is at most :data:`MAX_DURATION_TEXT`
characters and its value finite (``"1e400s"`` is not a duration; a 400-digit number of hours
would overflow to infinity and is refused); callers check their own bounds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from meshlib.errors import PolicyError

__all__ = ["MAX_DURATION_TEXT", "format_duration", "parse_duration"]

MAX_DURATION_TEXT = 64
"""Longest duration string accepted, in characters."""

_UNITS: dict[str, float] = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_TERM = r"(\d+(?:\.\d+)?)(ms|h|m|s)"
_WHOLE = re.compile(rf"(?:{_TERM})+")
_TERMS = re.compile(_TERM)


def parse_duration(value: Any, path: str) -> float:
    """Parse a duration string into seconds.

    Args:
        value: the decoded value; must be a string such as ``"250ms"``.
        path: the field path used in the error message.

    Returns:
        The duration in seconds (``>= 0``; callers check their own lower bounds).

    Raises:
        PolicyError: the value is not a string, not a valid duration, longer than
            :data:`MAX_DURATION_TEXT` or not finite.
    """
    if not isinstance(value, str):
        raise PolicyError(
            path, f"must be a duration string like '250ms' or '2s', got {_kind(value)}"
        )
    if len(value) > MAX_DURATION_TEXT:
        raise PolicyError(path, f"must be at most {MAX_DURATION_TEXT} characters")
    if _WHOLE.fullmatch(value) is None:
        raise PolicyError(
            path, f"invalid duration {value!r}: use a number and a unit (ms, s, m, h), e.g. '250ms'"
        )
    total = 0.0
    for number, unit in _TERMS.findall(value):
        # Divide for ms so that "25ms" gives exactly the float nearest to 0.025.
        total += float(number) / 1000 if unit == "ms" else float(number) * _UNITS[unit]
    if not math.isfinite(total):
        raise PolicyError(path, f"duration {value!r} is too large")
    return total


def _kind(value: Any) -> str:
    """A short, always printable description of a wrong value (never a huge repr)."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -(10**18) < value < 10**18 else "a very large integer"
    return type(value).__name__


def format_duration(seconds: float) -> str:
    """Format seconds as the shortest readable duration string that parses back exactly.

    Raises:
        ValueError: *seconds* is negative or not finite.
    """
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"cannot format duration {seconds!r}")
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    if millis / 1000 == seconds:
        return f"{millis}ms"
    # repr() round-trips; Decimal spells it without an exponent ("1e-05" -> "0.00001").
    return f"{format(Decimal(repr(seconds)), 'f')}s"
