"""The field readers every policy decoder is built from (internal to meshlib.policy).

Each reader checks one value against its type and range and raises
:class:`~meshlib.errors.PolicyError` naming its path; error messages show values only in
short form (:func:`_show`), whatever the input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from meshlib.errors import PolicyError
from meshlib.policy import model as m
from meshlib.policy.durations import format_duration, parse_duration
from meshlib.policy.regex import check_regex

__all__ = [
    "_DNS_LABEL",
    "_HEADER_NAME",
    "_METHOD",
    "_NAMESPACE_GLOB",
    "_at",
    "_bool",
    "_compile_regex",
    "_dns_label",
    "_duration",
    "_enum",
    "_int",
    "_items",
    "_kind_of",
    "_labels",
    "_list",
    "_mapping",
    "_method",
    "_number",
    "_opt",
    "_required",
    "_show",
    "_string",
    "_unique",
    "is_dns_label",
]

_T = TypeVar("_T")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_METHOD = re.compile(r"[A-Z]+")
_NAMESPACE_GLOB = re.compile(r"[a-z0-9*?-]+")


def is_dns_label(value: str) -> bool:
    """True when *value* is a DNS label (``^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$``)."""
    return _DNS_LABEL.fullmatch(value) is not None


# --- primitive readers ---------------------------------------------------------------------


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, Sequence):
        return "list"
    return type(value).__name__


def _show(value: Any) -> str:
    """A short, always printable form of *value* for an error message.

    ``repr`` of an integer of more than 4300 digits raises ValueError and that of a deeply
    nested list RecursionError; a long string would flood the message.
    """
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -(10**18) < value < 10**18 else "a very large integer"
    if isinstance(value, str):
        return repr(value) if len(value) <= 64 else repr(value[:61] + "...")
    return _kind_of(value)


def _mapping(value: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"must be a mapping, got {_kind_of(value)}")
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(path, f"field names must be strings, got {_show(key)}")
        if key not in allowed:
            raise PolicyError(
                _at(path, key if len(key) <= 64 else key[:61] + "..."),
                f"unknown field (allowed: {', '.join(allowed)})",
            )
    return value


def _required(mp: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in mp:
        raise PolicyError(_at(path, key), "required")
    return mp[key]


def _list(value: Any, path: str, *, non_empty: bool = False) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise PolicyError(path, f"must be a list, got {_kind_of(value)}")
    if non_empty and not value:
        raise PolicyError(path, "must not be empty (omit the field instead)")
    return value


def _items(
    mp: Mapping[str, Any], key: str, path: str, read: Callable[[Any, str], _T], **kw: bool
) -> tuple[_T, ...]:
    if key not in mp:
        return ()
    where = _at(path, key)
    return tuple(read(v, f"{where}[{i}]") for i, v in enumerate(_list(mp[key], where, **kw)))


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(path, f"must be a string, got {_kind_of(value)}")
    if not value:
        raise PolicyError(path, "must not be empty")
    return value


def _dns_label(value: Any, path: str) -> str:
    text = _string(value, path)
    if not is_dns_label(text):
        raise PolicyError(
            path, f"must be a DNS label (lower-case letters, digits and '-'), got {_show(text)}"
        )
    return text


def _enum(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise PolicyError(path, f"must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(path, f"must be true or false, got {_kind_of(value)}")
    return value


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(path, f"must be an integer, got {_kind_of(value)}")
    if value < lo:
        raise PolicyError(path, f"must be >= {lo}, got {_show(value)}")
    if value > hi:
        raise PolicyError(path, f"must be <= {hi}, got {_show(value)}")
    return value


def _number(value: Any, path: str, lo: float, hi: float, *, above: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(path, f"must be a number, got {_kind_of(value)}")
    # Compare integers before converting them: float(10**400) raises OverflowError.
    if isinstance(value, int) and not -(2**53) <= value <= 2**53:
        bound = f">= {lo:g}" if value < 0 else f"<= {hi:g}"
        raise PolicyError(path, f"must be {bound}, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise PolicyError(path, f"must be finite, got {_show(value)}")
    if above and number <= lo:
        raise PolicyError(path, f"must be > {lo:g}, got {_show(value)}")
    if number < lo:
        raise PolicyError(path, f"must be >= {lo:g}, got {_show(value)}")
    if number > hi:
        raise PolicyError(path, f"must be <= {hi:g}, got {_show(value)}")
    return number


def _duration(value: Any, path: str) -> float:
    seconds = parse_duration(value, path)
    if seconds <= 0:
        raise PolicyError(path, "must be > 0")
    if seconds < m.MIN_DURATION:
        raise PolicyError(path, f"must be >= {format_duration(m.MIN_DURATION)}")
    if seconds > m.MAX_DURATION:
        raise PolicyError(path, f"must be <= {format_duration(m.MAX_DURATION)}")
    return seconds


def _opt(
    mp: Mapping[str, Any], key: str, path: str, read: Callable[[Any, str], _T], default: _T
) -> _T:
    return read(mp[key], _at(path, key)) if key in mp else default


def _unique(names: Sequence[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise PolicyError(f"{path}[{i}].name", f"duplicate {what} name {_show(name)}")
        seen.add(name)


def _compile_regex(value: Any, path: str) -> str:
    text = _string(value, path)
    check_regex(text, path)
    return text


# --- TrafficPolicy -------------------------------------------------------------------------


def _labels(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"must be a mapping, got {_kind_of(value)}")
    if not value:
        raise PolicyError(path, "must not be empty")
    pairs: list[tuple[str, str]] = []
    for key, label in value.items():
        if not isinstance(key, str) or not key:
            raise PolicyError(path, f"label names must be non-empty strings, got {_show(key)}")
        if not isinstance(label, str):
            raise PolicyError(_at(path, key), f"must be a string, got {_kind_of(label)}")
        pairs.append((key, label))
    return tuple(sorted(pairs))


def _method(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _METHOD.fullmatch(text):
        raise PolicyError(
            path, f"must be an upper-case HTTP method such as 'GET', got {_show(text)}"
        )
    return text
