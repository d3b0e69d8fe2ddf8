"""Regexes of the policy model: the subset both data planes can run safely.

Header and path regexes run on every request, in the library with Python's backtracking
``re`` and in the sidecar with Envoy's RE2. A regex is accepted only when it

* is at most :data:`MAX_REGEX_LENGTH` characters, nests at most :data:`MAX_REGEX_NESTING`
  deep and compiles with ``re``;
* has no backreferences, conditionals, atomic groups or possessive quantifiers (they are
  not RE2 syntax either). Lookaround is not RE2 syntax but is accepted: the library runs
  it, and the xDS translator reports the match as ignored by the sidecar (invariant 5);
* repeats at most :data:`MAX_REGEX_REPEAT` times, counting nested counts multiplied
  (``a{99999999999}`` and ``(a{100}){100}`` are refused; RE2's own limit is 1000);
* cannot backtrack exponentially: the body of a repetition that may repeat more than once
  matches a fixed-width string (``(a+)+``, ``(a|aa)*`` and ``(\\d{1,3}\\.){3}`` are refused),
  and alternatives inside it start with distinct literal characters (``(a|a)*`` is refused,
  ``(get|put)*`` is fine).

Adjacent unbounded repeats (``.*a.*a.*b``) can still take polynomial time in ``re``;
request heads are bounded by the server, which bounds that cost.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from meshlib.errors import PolicyError

__all__ = ["MAX_REGEX_LENGTH", "MAX_REGEX_NESTING", "MAX_REGEX_REPEAT", "check_regex"]

MAX_REGEX_LENGTH = 1024
"""Longest regex accepted, in characters."""

MAX_REGEX_REPEAT = 1000
"""Largest repetition count, nested counts multiplied (RE2 refuses counts above 1000)."""

# The parser behind re.compile; typeshed has no stubs for it (sre_parse is deprecated).
_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

MAX_REGEX_NESTING = 32
"""Deepest nesting of groups, alternatives and repetitions."""

_UNSUPPORTED = {
    _c.GROUPREF: "backreferences",
    _c.GROUPREF_EXISTS: "conditional groups",
}
for _name in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):  # Python >= 3.11
    if hasattr(_c, _name):
        _UNSUPPORTED[getattr(_c, _name)] = "atomic groups and possessive quantifiers"
_REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT)


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _walk(items: Any, budget: int, in_repeat: bool, depth: int = 0) -> None:
    """Check one parsed subpattern; *budget* is the repetition count still allowed."""
    if depth > MAX_REGEX_NESTING:
        raise _Refused(f"groups and repetitions nest at most {MAX_REGEX_NESTING} deep")
    for op, av in items:
        if op in _UNSUPPORTED:
            raise _Refused(f"{_UNSUPPORTED[op]} are not supported")
        if op in _REPEATS:
            lo, hi, body = av
            bounded = hi if hi != _c.MAXREPEAT else lo
            if lo > MAX_REGEX_REPEAT or bounded > budget:
                raise _Refused(
                    f"repetition counts must be <= {MAX_REGEX_REPEAT} (nested counts multiplied)"
                )
            repeats = hi == _c.MAXREPEAT or hi > 1
            if repeats:
                width_lo, width_hi = body.getwidth()
                if width_lo != width_hi:
                    raise _Refused(
                        "a repeated group must match a fixed-width string (nested or "
                        "alternative-length repetition can take exponential time)"
                    )
            _walk(body, budget // max(bounded, 1), in_repeat or repeats, depth + 1)
        elif op is _c.SUBPATTERN or op is _c.ASSERT or op is _c.ASSERT_NOT:
            _walk(av[-1], budget, in_repeat, depth + 1)
        elif op is _c.BRANCH:
            branches = av[1]
            if in_repeat:
                firsts = [b[0] if len(b) else None for b in branches]
                literals = [a for o, a in (f for f in firsts if f is not None) if o is _c.LITERAL]
                if (
                    None in firsts
                    or len(literals) != len(firsts)
                    or len(set(literals)) != len(literals)
                ):
                    raise _Refused(
                        "alternatives inside a repetition must start with distinct literal "
                        "characters (overlapping alternatives can take exponential time)"
                    )
            for branch in branches:
                _walk(branch, budget, in_repeat, depth + 1)


def check_regex(text: str, path: str) -> re.Pattern[str]:
    """Compile *text* if it is a regex the data planes can run safely (see the module doc).

    Returns:
        The compiled pattern.

    Raises:
        PolicyError: at *path*, saying why the regex is refused.
    """
    if len(text) > MAX_REGEX_LENGTH:
        raise PolicyError(path, f"regex must be at most {MAX_REGEX_LENGTH} characters")
    shown = text if len(text) <= 64 else text[:61] + "..."
    try:
        compiled = re.compile(text)
        _walk(_parser.parse(text), MAX_REGEX_REPEAT, False)
    except re.error as exc:
        raise PolicyError(path, f"invalid regex {shown!r}: {exc}") from exc
    except (OverflowError, RecursionError, ValueError) as exc:
        raise PolicyError(path, f"invalid regex {shown!r}: {exc}") from exc
    except _Refused as exc:
        raise PolicyError(path, f"regex {shown!r} refused: {exc.reason}") from exc
    return compiled
