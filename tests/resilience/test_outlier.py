from __future__ import annotations

from meshlib.policy.model import OutlierDetection
from meshlib.resilience.outlier import DEFAULT_MAX_EJECTION_TIME, OutlierDetector
from meshlib.resilience.retry import CONNECT_FAILURE, RESET, TIMEOUT, Outcome

OK = Outcome.from_status(200)
E500 = Outcome.from_status(500)
E502 = Outcome.from_status(502)
E503 = Outcome.from_status(503)
HOSTS = ("a:1", "b:1", "c:1", "d:1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def detector(clock: Clock, hosts: tuple[str, ...] = HOSTS, **policy: float) -> OutlierDetector:
    config = {
        "consecutive_5xx": 3,
        "consecutive_gateway_errors": 2,
        "interval": 10.0,
        "base_ejection_time": 30.0,
        "max_ejection_percent": 50,
        **policy,
    }
    det = OutlierDetector(OutlierDetection(**config), clock=clock)  # type: ignore[arg-type]
    det.set_endpoints(hosts)
    return det


def record(det: OutlierDetector, authority: str, *outcomes: Outcome) -> None:
    for outcome in outcomes:
        det.record(authority, outcome)


def test_no_policy_never_ejects() -> None:
    """Without outlier detection nothing is ever ejected."""
    det = OutlierDetector(None, clock=Clock())
    det.set_endpoints(HOSTS)
    record(det, "a:1", *[E503] * 50)
    assert det.ejected() == frozenset()
    assert not det.enabled


def test_consecutive_5xx_eject() -> None:
    """consecutive5xx 5xx responses in a row eject the endpoint."""
    det = detector(Clock(), consecutive_gateway_errors=100)
    record(det, "a:1", E500, E500)
    assert not det.is_ejected("a:1")
    record(det, "a:1", E500)
    assert det.ejected() == frozenset({"a:1"})


def test_local_failures_count_as_5xx() -> None:
    """Connect failures, resets and timeouts extend the 5xx streak."""
    det = detector(Clock(), consecutive_gateway_errors=100)
    record(det, "a:1", RESET, E500, TIMEOUT)
    assert det.is_ejected("a:1")


def test_consecutive_gateway_errors_eject() -> None:
    """502/503/504 and connect failures in a row eject at consecutiveGatewayErrors."""
    det = detector(Clock(), consecutive_5xx=100)
    record(det, "a:1", E502, CONNECT_FAILURE)
    assert det.is_ejected("a:1")


def test_a_plain_500_breaks_the_gateway_streak() -> None:
    """A 5xx that is not a gateway error ends the gateway-error streak."""
    det = detector(Clock(), consecutive_5xx=100)
    record(det, "a:1", E503, E500, E503)
    assert not det.is_ejected("a:1")


def test_a_success_resets_the_streaks() -> None:
    """A non-failure outcome ends both streaks."""
    det = detector(Clock())
    record(det, "a:1", E500, E503, OK, E500, E503, Outcome.from_status(404), E500)
    assert not det.is_ejected("a:1")


def test_a_streak_older_than_the_interval_restarts() -> None:
    """Errors spread over more than one interval do not add up."""
    clock = Clock()
    det = detector(clock, consecutive_gateway_errors=100)
    record(det, "a:1", E500, E500)
    clock.now += 11
    record(det, "a:1", E500)
    assert not det.is_ejected("a:1")
    record(det, "a:1", E500, E500)
    assert det.is_ejected("a:1")


def test_ejection_lasts_base_time_times_ejection_count() -> None:
    """The nth ejection lasts n * baseEjectionTime, reported to on_eject."""
    clock = Clock()
    seen: list[tuple[str, float]] = []
    det = OutlierDetector(
        OutlierDetection(consecutive_gateway_errors=2, base_ejection_time=30.0, interval=10.0),
        clock=clock,
        on_eject=lambda a, s: seen.append((a, s)),
    )
    det.set_endpoints(HOSTS)
    record(det, "a:1", E503, E503)
    clock.now += 29.9
    assert det.is_ejected("a:1")
    clock.now += 0.1
    assert not det.is_ejected("a:1")
    record(det, "a:1", E503, E503)  # at once: no decay yet
    clock.now += 59.9
    assert det.is_ejected("a:1")
    clock.now += 0.1
    assert det.ejected() == frozenset()
    assert seen == [("a:1", 30.0), ("a:1", 60.0)]


def test_ejection_count_decays_one_per_healthy_interval() -> None:
    """Each full interval un-ejected forgives one ejection."""
    clock = Clock()
    det = detector(clock)
    record(det, "a:1", E503, E503)
    clock.now += 30  # un-ejected now
    record(det, "a:1", E503, E503)
    assert det.ejection_count("a:1") == 2
    clock.now += 60  # un-ejected now
    assert det.ejection_count("a:1") == 2
    clock.now += 10
    assert det.ejection_count("a:1") == 1
    clock.now += 10
    assert det.ejection_count("a:1") == 0
    record(det, "a:1", E503, E503)
    assert det.ejection_count("a:1") == 1


def test_ejection_time_is_capped() -> None:
    """Ejections never last longer than the default max ejection time (300 s)."""
    clock = Clock()
    seen: list[float] = []
    det = OutlierDetector(
        OutlierDetection(consecutive_gateway_errors=1, base_ejection_time=100.0, interval=1.0),
        clock=clock,
        on_eject=lambda a, s: seen.append(s),
    )
    det.set_endpoints(HOSTS)
    for _ in range(5):
        record(det, "a:1", E503)
        clock.now += seen[-1]
    assert seen == [100.0, 200.0, DEFAULT_MAX_EJECTION_TIME, 300.0, 300.0]


def test_max_ejection_percent_caps_ejections() -> None:
    """Never more than maxEjectionPercent of endpoints are ejected at once."""
    det = detector(Clock())
    for host in HOSTS:
        record(det, host, E503, E503)
    assert det.ejected() == frozenset({"a:1", "b:1"})


def test_half_of_two_endpoints_may_be_ejected() -> None:
    """With maxEjectionPercent 50 and two endpoints one may be ejected (as Envoy)."""
    det = detector(Clock(), hosts=("a:1", "b:1"))
    record(det, "a:1", E503, E503)
    record(det, "b:1", E503, E503)
    assert det.ejected() == frozenset({"a:1"})


def test_a_small_percent_of_few_endpoints_ejects_none() -> None:
    """With 10 % and four endpoints nothing may be ejected (as Envoy without alwaysEjectOne)."""
    det = detector(Clock(), max_ejection_percent=10)
    record(det, "a:1", E503, E503, E503)
    assert det.ejected() == frozenset()


def test_blocked_endpoint_is_ejected_once_room_frees_up() -> None:
    """An endpoint held back by the cap is ejected at its next error after another returns."""
    clock = Clock()
    det = detector(clock, hosts=("a:1", "b:1"), base_ejection_time=5.0)
    record(det, "a:1", E503, E503)
    record(det, "b:1", E503, E503)
    clock.now += 5  # a:1 returns; b:1's streak (within the interval) goes on
    assert det.ejected() == frozenset()
    record(det, "b:1", E503)
    assert det.ejected() == frozenset({"b:1"})


def test_reports_while_ejected_are_ignored() -> None:
    """Outcomes of calls sent before the ejection do not extend it or count."""
    clock = Clock()
    det = detector(clock)
    record(det, "a:1", E503, E503, E503, E503)
    clock.now += 30
    assert not det.is_ejected("a:1")
    record(det, "a:1", E503)
    assert not det.is_ejected("a:1")


def test_set_endpoints_forgets_departed_endpoints() -> None:
    """Endpoints removed from the set lose their state and leave the ejected set."""
    det = detector(Clock())
    record(det, "a:1", E503, E503)
    det.set_endpoints(("b:1", "c:1"))
    assert det.ejected() == frozenset()
    assert det.ejection_count("a:1") == 0


def test_ejected_set_is_cached_between_changes() -> None:
    """ejected() returns the same frozenset object until something changes."""
    clock = Clock()
    det = detector(clock)
    record(det, "a:1", E503, E503)
    first = det.ejected()
    clock.now += 5
    assert det.ejected() is first
    det.set_endpoints(HOSTS)  # unchanged set: nothing recomputed
    assert det.ejected() is first
