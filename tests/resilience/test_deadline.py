from __future__ import annotations

import math

import pytest

from meshlib.resilience.deadline import (
    DEADLINE_HEADER,
    MAX_DEADLINE,
    current_deadline,
    deadline_scope,
    effective_deadline,
    format_deadline_header,
    parse_deadline_header,
    remaining,
    reset_deadline,
    set_deadline,
)


def test_header_name() -> None:
    """The deadline travels in x-mesh-deadline-ms."""
    assert DEADLINE_HEADER == "x-mesh-deadline-ms"


def test_parse_adds_milliseconds_to_now() -> None:
    """A header of N ms means now + N/1000 on the receiver's clock."""
    assert parse_deadline_header("1500", 100.0) == pytest.approx(101.5)
    assert parse_deadline_header(" 20 ", 100.0) == pytest.approx(100.02)
    assert parse_deadline_header("0", 100.0) == 100.0


@pytest.mark.parametrize(
    "value",
    [None, "", "  ", "-5", "+5", "1.5", "abc", "1_000", "\uff11\uff12", "\u00b2", "5ms", "1e3"],
)
def test_parse_rejects_invalid_values(value: str | None) -> None:
    """Anything but a non-negative ASCII integer gives None, without raising."""
    assert parse_deadline_header(value, 100.0) is None


def test_parse_clamps_to_a_day() -> None:
    """Values above 24 h, however long, are clamped to 24 h."""
    assert parse_deadline_header(str(10**12), 0.0) == MAX_DEADLINE
    assert parse_deadline_header("9" * 5000, 0.0) == MAX_DEADLINE
    assert parse_deadline_header("000000000000000000001", 0.0) == pytest.approx(0.001)


def test_format_rounds_down_to_whole_milliseconds() -> None:
    """The header carries the milliseconds left, rounded down so a callee is never later."""
    assert format_deadline_header(101.2349, 100.0) == "1234"
    assert format_deadline_header(100.0005, 100.0) == "0"


def test_format_of_a_passed_deadline_is_zero() -> None:
    """A deadline already passed is sent as 0."""
    assert format_deadline_header(99.0, 100.0) == "0"


def test_format_then_parse_never_extends_the_deadline() -> None:
    """A round trip on the same clock gives a deadline no later than the original."""
    deadline = 107.123456
    parsed = parse_deadline_header(format_deadline_header(deadline, 100.0), 100.0)
    assert parsed is not None
    assert deadline - 0.001 <= parsed <= deadline


def test_effective_deadline_takes_the_earlier() -> None:
    """The call's deadline is the earlier of the route timeout and the inherited one."""
    assert effective_deadline(5.0, 100.0, inherited=103.0) == 103.0
    assert effective_deadline(2.0, 100.0, inherited=103.0) == 102.0
    assert effective_deadline(None, 100.0, inherited=103.0) == 103.0
    assert effective_deadline(2.0, 100.0, inherited=None) == 102.0
    assert effective_deadline(None, 100.0, inherited=None) is None


def test_effective_deadline_inherits_from_the_context() -> None:
    """Without an explicit inherited value, current_deadline is used."""
    assert effective_deadline(5.0, 100.0) == 105.0
    with deadline_scope(101.0):
        assert effective_deadline(5.0, 100.0) == 101.0
        assert effective_deadline(5.0, 100.0, inherited=None) == 105.0


def test_deadline_scope_sets_and_restores() -> None:
    """deadline_scope sets current_deadline inside the block and restores it after."""
    assert current_deadline.get() is None
    with deadline_scope(50.0) as value:
        assert value == 50.0
        with deadline_scope(40.0):
            assert current_deadline.get() == 40.0
        assert current_deadline.get() == 50.0
    assert current_deadline.get() is None


def test_deadline_scope_restores_on_error() -> None:
    """The previous deadline comes back even when the block raises."""
    with pytest.raises(RuntimeError), deadline_scope(50.0):
        raise RuntimeError
    assert current_deadline.get() is None


def test_set_and_reset_deadline_for_interceptors() -> None:
    """set_deadline/reset_deadline do what deadline_scope does, in two calls."""
    token = set_deadline(12.0)
    assert current_deadline.get() == 12.0
    reset_deadline(token)
    assert current_deadline.get() is None


def test_remaining() -> None:
    """remaining is the time left, 0 once passed, inf without a deadline."""
    assert remaining(105.0, 100.0) == 5.0
    assert remaining(95.0, 100.0) == 0.0
    assert remaining(None, 100.0) == math.inf


def test_effective_deadline_clamps_an_unrepresentable_route_timeout() -> None:
    """An infinite or NaN route timeout becomes the 24 h maximum, not an inf/NaN deadline."""
    assert effective_deadline(float("inf"), 10.0, None) == 10.0 + MAX_DEADLINE
    assert effective_deadline(float("nan"), 10.0, None) == 10.0 + MAX_DEADLINE
