"""Outlier detection, pure: outcomes and times in, ejections and returns out."""

from __future__ import annotations

import pytest

from meshcore.model.policy import OutlierDetection, SuccessRateEjection
from meshd.cluster.outlier import Address, OutlierDetector

pytestmark = pytest.mark.timeout(30)

A: Address = ("10.0.0.1", 80)
B: Address = ("10.0.0.2", 80)
C: Address = ("10.0.0.3", 80)
D: Address = ("10.0.0.4", 80)


def _detector(addresses: list[Address] | None = None, **fields: object) -> OutlierDetector:
    config = OutlierDetection.model_validate(
        {
            "consecutive_5xx": 3,
            "consecutive_gateway_errors": 3,
            "consecutive_local_origin_failures": 3,
            "interval_s": 10,
            "base_ejection_s": 30,
            "max_ejection_s": 300,
            "max_ejection_percent": 100,
            **fields,
        }
    )
    return OutlierDetector(config, addresses or [A, B], now=0.0)


def test_consecutive_5xx_ejects_and_a_success_resets_the_run() -> None:
    det = _detector()
    assert det.report(A, 500, 1.0) is None
    assert det.report(A, 500, 1.0) is None
    assert det.report(A, 200, 1.0) is None  # the run ends
    assert det.endpoints[A].consecutive_5xx == 0
    assert det.report(A, 500, 2.0) is None
    assert det.report(A, 500, 2.0) is None
    ejection = det.report(A, 500, 2.0)
    assert ejection is not None
    assert (ejection.address, ejection.cause, ejection.until) == (A, "consecutive_5xx", 32.0)
    assert det.ejected == {A}


def test_gateway_errors_are_their_own_run_and_a_500_ends_it() -> None:
    det = _detector(consecutive_5xx=10)
    det.report(A, 502, 1.0)
    det.report(A, 503, 1.0)
    det.report(A, 500, 1.0)  # a 5xx, not a gateway error: the gateway run ends
    assert det.endpoints[A].consecutive_gateway_errors == 0
    assert det.endpoints[A].consecutive_5xx == 3
    det.report(A, 504, 1.0)
    det.report(A, 502, 1.0)
    ejection = det.report(A, 503, 1.0)
    assert ejection is not None and ejection.cause == "consecutive_gateway_errors"


def test_local_origin_failures_count_everywhere_and_any_response_ends_their_run() -> None:
    det = _detector(consecutive_5xx=10, consecutive_gateway_errors=10)
    det.report(A, 0, 1.0)
    det.report(A, 0, 1.0)
    det.report(A, 503, 1.0)  # a response: the local-origin run ends, the others go on
    state = det.endpoints[A]
    assert (state.consecutive_local_origin_failures, state.consecutive_gateway_errors) == (0, 3)
    assert state.consecutive_5xx == 3
    det.report(A, 0, 1.0)
    det.report(A, 0, 1.0)
    ejection = det.report(A, 0, 1.0)
    assert ejection is not None and ejection.cause == "consecutive_local_origin_failures"


def test_ejection_time_grows_is_capped_and_the_endpoint_returns() -> None:
    det = _detector(max_ejection_s=70)
    until = []
    now = 0.0
    for _ in range(4):
        ejection = None
        for _ in range(3):
            ejection = det.report(A, 500, now)
        assert ejection is not None
        until.append(ejection.until - now)
        assert det.next_deadline == min(ejection.until, det.next_deadline)
        assert not det.tick(ejection.until - 0.001).returned
        now = ejection.until
        assert det.tick(now).returned == [A]
        assert det.ejected == frozenset()
    # 30, 60, then capped at 70 (times_ejected goes on growing).
    assert until == [30, 60, 70, 70]
    assert det.endpoints[A].times_ejected == 4


def test_reports_while_ejected_are_ignored() -> None:
    det = _detector()
    for _ in range(3):
        det.report(A, 500, 0.0)
    assert det.report(A, 500, 1.0) is None
    assert det.endpoints[A].consecutive_5xx == 0


def test_quiet_intervals_lower_the_ejection_count() -> None:
    det = _detector(interval_s=10, base_ejection_s=5)
    for _ in range(3):
        det.report(A, 500, 0.0)
    det.tick(5.0)  # back
    assert det.endpoints[A].times_ejected == 1
    det.tick(10.0)  # only 5 s in service at this interval's end
    assert det.endpoints[A].times_ejected == 1
    det.tick(20.0)
    assert det.endpoints[A].times_ejected == 0


@pytest.mark.parametrize(
    ("endpoints", "percent", "allowed"),
    [(4, 50, 2), (4, 25, 1), (3, 50, 1), (10, 10, 1), (3, 10, 1), (2, 100, 2), (4, 0, 0)],
)
def test_max_ejection_percent(endpoints: int, percent: int, allowed: int) -> None:
    addresses = [(f"10.0.0.{i}", 80) for i in range(endpoints)]
    det = _detector(addresses, max_ejection_percent=percent)
    for address in addresses:
        for _ in range(3):
            det.report(address, 500, 1.0)
    assert len(det.ejected) == allowed
    # Failures go on being counted; once an ejected endpoint returns another may go.
    if allowed:
        det.tick(31.0)
        for address in addresses:
            for _ in range(3):
                det.report(address, 500, 31.0)
        assert len(det.ejected) == allowed


def test_success_rate_ejects_the_outlier_at_the_interval_end() -> None:
    addresses = [A, B, C, D]
    rule = SuccessRateEjection(minimum_hosts=4, request_volume=10, stdev_factor=1.0)
    det = _detector(addresses, success_rate=rule.model_dump(), consecutive_5xx=1000)
    for address in addresses:
        for i in range(20):
            # A fails half its requests, the others one in twenty.
            failed = i % 2 == 0 if address == A else i == 0
            det.report(address, 500 if failed else 200, 1.0)
    assert det.ejected == frozenset()
    result = det.tick(10.0)
    assert [(e.address, e.cause) for e in result.ejections] == [(A, "success_rate")]
    assert det.ejected == {A}


def test_success_rate_needs_enough_hosts_and_volume() -> None:
    rule = SuccessRateEjection(minimum_hosts=3, request_volume=10, stdev_factor=0.1)
    det = _detector([A, B, C], success_rate=rule.model_dump(), consecutive_5xx=1000)
    for address in (A, B):
        for _i in range(20):
            det.report(address, 500 if address == A else 200, 1.0)
    for _ in range(5):  # C: below request_volume, so only two hosts qualify
        det.report(C, 200, 1.0)
    assert not det.tick(10.0).ejections
    # Counts start again each interval.
    assert det.endpoints[A].requests == 0


def test_update_keeps_state_of_endpoints_that_stay() -> None:
    det = _detector([A, B])
    for _ in range(3):
        det.report(A, 500, 0.0)
    det.report(B, 500, 0.0)
    config = det.config.model_copy(update={"consecutive_5xx": 2})
    assert not det.update(config, [A, B, C], 1.0)
    assert det.ejected == {A}
    assert det.endpoints[B].consecutive_5xx == 1
    assert det.report(B, 500, 1.0) is not None  # the new threshold applies
    assert det.update(config, [C], 2.0)  # both ejected ones left
    assert det.ejected == frozenset()
    assert det.report(A, 500, 2.0) is None  # unknown now
