from __future__ import annotations

import random

import pytest

from meshlib.errors import PolicyError
from meshlib.policy.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("25ms", 0.025),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_accepts_units(text: str, seconds: float) -> None:
    """Duration strings with ms, s, m, h (and sums of them) parse to float seconds."""
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("bad", ["", "2", "-1s", "1.s", "2 s", "1d", "s", "1e3s"])
def test_parse_duration_rejects_malformed_strings(bad: str) -> None:
    """Anything but <number><unit> terms is refused with the given path."""
    with pytest.raises(PolicyError, match=r"^spec\.timeout: invalid duration"):
        parse_duration(bad, "spec.timeout")


@pytest.mark.parametrize("bad", [2, 1.5, None, True, ["1s"]])
def test_parse_duration_rejects_non_strings(bad: object) -> None:
    """Bare numbers are refused: the unit must be explicit."""
    with pytest.raises(PolicyError, match=r"^t: must be a duration string"):
        parse_duration(bad, "t")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3600.0, "1h"), (120.0, "2m"), (90.0, "90s"), (2.0, "2s"), (0.25, "250ms"), (1.5, "1500ms")],
)
def test_format_duration_picks_the_largest_whole_unit(seconds: float, text: str) -> None:
    """Formatting uses the largest unit that expresses the value as an integer."""
    assert format_duration(seconds) == text


def test_format_duration_round_trips_arbitrary_values() -> None:
    """parse_duration(format_duration(x)) == x for arbitrary non-negative floats."""
    rng = random.Random(7)
    values = [0.0, 1e-05, 0.0125, 1 / 3, 12345.678] + [rng.uniform(0, 5000) for _ in range(500)]
    for value in values:
        assert parse_duration(format_duration(value), "x") == value


def test_format_duration_rejects_negative() -> None:
    """Negative durations cannot be formatted."""
    with pytest.raises(ValueError):
        format_duration(-1.0)
