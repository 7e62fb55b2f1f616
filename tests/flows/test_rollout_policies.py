"""The rollout's policies on their own: plain logic, time injected (no hub, no sleeps)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from iot_flows.flows.rollout import (
    AbortCriterion,
    AbortPolicy,
    GatePolicy,
    HealthGate,
    HealthPolicy,
    RateLimit,
    RatePolicy,
    RetryPolicy,
    RolloutRequest,
    WaveTally,
    policies_for,
)
from iot_flows.flows.rollout._mechanisms import classify_record


def test_gate_holds_below_the_success_ratio():
    gate = GatePolicy(0.9)
    assert gate.verdict(WaveTally(total=10, succeeded=9, failed=1)) is None
    assert "80%" in gate.verdict(WaveTally(total=10, succeeded=8, failed=2))


def test_abort_by_failure_type_after_a_minimum_of_finished_devices():
    policy = AbortPolicy([AbortCriterion(failure_type="rejected", threshold_ratio=0.2, min_finished=5),
                          AbortCriterion(failure_type="timed_out", threshold_ratio=0.5, min_finished=5)])  # fmt: skip
    # 4 finished: below the minimum, however bad
    assert policy.verdict(WaveTally(total=100, succeeded=1, rejected=3)) is None
    # 5 finished, 3 rejected = 60 % > 20 %
    assert policy.verdict(WaveTally(total=100, succeeded=2, rejected=3)) == "rejected 3/5 = 60% above 20%"
    # failures of another type do not count towards the rejected criterion
    assert policy.verdict(WaveTally(total=100, succeeded=4, failed=6)) is None
    assert policy.verdict(WaveTally(total=100, succeeded=4, timed_out=6)).startswith("timed out 6/10")
    # a small wave counts once it is all finished, below the minimum
    assert policy.verdict(WaveTally(total=2, rejected=1, succeeded=1)) is not None
    # transient failures still to be retried are not finished
    assert policy.verdict(WaveTally(total=100, succeeded=10, retrying=50)) is None


def test_abort_failure_ratio_is_the_all_criterion():
    policies = policies_for(RolloutRequest(package_uri="https://x/fw-1.bin", version="1", abort_failure_ratio=0.1,
                                           abort_min_finished=3))  # fmt: skip
    assert policies.abort.verdict(WaveTally(total=50, succeeded=2, failed=1)) is not None
    assert policies.abort.verdict(WaveTally(total=50, succeeded=20, failed=1, rejected=1)) is None


def test_retry_only_transient_failures_with_backoff_and_jitter():
    policy = RetryPolicy(retries=2, backoff_seconds=10, max_backoff_seconds=25, rng=random.Random(1))
    assert policy.should_retry(True, 1) and policy.should_retry(True, 2) and not policy.should_retry(True, 3)
    assert not policy.should_retry(False, 1)  # a rejection, never
    delays = [policy.delay(a) for a in (1, 2, 3, 4)]
    assert 5 <= delays[0] <= 15 and 10 <= delays[1] <= 30 and all(12.5 <= d <= 37.5 for d in delays[2:])  # capped at 25
    assert len({round(d, 6) for d in delays}) == 4  # jitter


def test_failure_classes_from_job_records():
    rejected = classify_record({"status": "failed", "outcome": {"deviceMethodResponse": {"status": 409, "payload": {}}}})
    assert rejected.type == "rejected" and not rejected.transient
    assert classify_record({"status": "failed", "outcome": {"deviceMethodResponse": {"status": 400}}}).type == "rejected"
    busy = classify_record({"status": "failed", "outcome": {"deviceMethodResponse": {"status": 503}}})
    assert busy.type == "failed" and busy.transient
    timeout = classify_record({"status": "failed", "error": {"code": "GatewayTimeout"}})
    assert timeout.type == "timed_out" and timeout.transient
    offline = classify_record({"status": "failed", "error": {"code": "DeviceNotOnline"}})
    assert offline.type == "failed" and offline.transient


def test_fixed_rate_releases_devices_per_minute():
    rate = RatePolicy(RateLimit(max_per_minute=30))
    started = [rate.release(t, 0) for t in (0, 1, 2, 3, 60)]
    assert started[0] == 1 and sum(started[:4]) == 2  # 1 at once, then 0.5 per second
    assert sum(started) == 1 + 30


def test_exponential_ramp_follows_its_steps():
    """base 15/min, x2 each 15 successes, capped at 120/min: observed per-minute releases."""
    rate = RatePolicy(RateLimit(base_per_minute=15, increment_factor=2, successes_per_step=15, max_per_minute=120))
    assert [rate.per_minute(s) for s in (0, 14, 15, 30, 45, 1000)] == [15, 15, 30, 60, 120, 120]
    released, successes, per_minute = 0, 0, []
    rate.release(0.0, 0)
    for minute in range(1, 6):
        n = sum(rate.release(minute * 60.0 - 60 + s, successes) for s in range(1, 61))  # one poll per second
        per_minute.append(n)
        released += n
        successes = released  # every started device succeeded by the next minute
    assert per_minute == [15, 30, 120, 120, 120]  # 15 -> 45 successes: three steps at once


def test_rate_limit_needs_a_rate():
    with pytest.raises(ValidationError, match="max_per_minute"):
        RateLimit()
    with pytest.raises(ValidationError, match="increment_factor"):
        RateLimit(base_per_minute=1, increment_factor=0.5)


async def test_health_gate_must_hold_without_a_break():
    now = [0.0]
    readings = iter([3, 2, 3, 3, 3, 3, 3])

    async def count() -> int:
        return next(readings)

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    policy = HealthPolicy(HealthGate(condition="properties.reported.health.status = 'ok'", hold_seconds=3), poll_interval=1)
    assert await policy.hold(count, 3, clock=lambda: now[0], sleep=sleep) is None
    assert now[0] == 5.0  # broken at t=1, so it held from t=2 to t=5

    async def never() -> int:
        return 1

    now[0] = 0.0
    short = HealthPolicy(HealthGate(condition="x = 1", hold_seconds=1, timeout_seconds=4), poll_interval=1)
    reason = await short.hold(never, 3, clock=lambda: now[0], sleep=sleep)
    assert reason and "1/3 devices match x = 1" in reason


def test_parameters_are_validated_with_the_field_named():
    with pytest.raises(ValidationError, match="template"):
        RolloutRequest(package_uri="https://x/fw.bin", version="1", mechanism="template")
    with pytest.raises(ValidationError, match="rollback_package_uri"):
        RolloutRequest(package_uri="https://x/fw.bin", version="1", rollback_package_uri="https://x/fw.bin")
    with pytest.raises(ValidationError, match="threshold_ratio"):
        RolloutRequest(package_uri="https://x/fw.bin", version="1", abort=[{"failure_type": "rejected", "threshold_ratio": 2}])
    with pytest.raises(ValidationError, match="failure_type"):
        RolloutRequest(package_uri="https://x/fw.bin", version="1", abort=[{"failure_type": "bricked", "threshold_ratio": 0.1}])
