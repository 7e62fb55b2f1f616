"""The throttle model: documented per-tier limits, token buckets, traffic shaping (docs/iothub-reference.md §6)."""

from __future__ import annotations

import asyncio

import pytest

from iot_flows._exceptions import ThrottledError
from iot_flows._settings import HubSettings, QuotaTier
from iot_flows.hub._quota import (
    Operation,
    Paced,
    Quota,
    TokenBucket,
    device_publish_operation,
    max_concurrent_jobs,
    method_cost,
    tier_limits,
)
from iot_flows.hub.api._throttle import operation_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_s1_limits_are_the_documented_ones() -> None:
    s1 = tier_limits("s1")
    assert s1[Operation.TWIN_READ] == 100
    assert s1[Operation.TWIN_UPDATE] == 50
    assert s1[Operation.JOBS] == pytest.approx(100 / 60)
    assert s1[Operation.DIRECT_METHOD] == 40  # 160 KB/s in 4 KB blocks
    assert s1[Operation.QUERY] == pytest.approx(20 / 60)
    assert s1[Operation.REGISTRY] == pytest.approx(100 / 60)
    assert s1[Operation.CONNECT] == 100 and s1[Operation.D2C] == 100
    assert tier_limits("free") == s1


def test_units_scale_as_documented() -> None:
    # S1: twin reads/updates flat; connections the higher of 100/s or 12/s/unit.
    s1x10 = tier_limits(QuotaTier.S1, 10)
    assert s1x10[Operation.TWIN_READ] == 100 and s1x10[Operation.TWIN_UPDATE] == 50
    assert s1x10[Operation.CONNECT] == 120
    assert s1x10[Operation.JOBS] == pytest.approx(1000 / 60)
    s2x20 = tier_limits("s2", 20)
    assert s2x20[Operation.TWIN_READ] == 200 and s2x20[Operation.TWIN_UPDATE] == 100
    assert tier_limits("s2", 1)[Operation.TWIN_READ] == 100
    assert s2x20[Operation.DIRECT_METHOD] == 120 * 20
    s3x2 = tier_limits("s3", 2)
    assert s3x2[Operation.TWIN_READ] == 1000 and s3x2[Operation.TWIN_UPDATE] == 500
    assert s3x2[Operation.JOBS] == pytest.approx(10000 / 60)
    assert s3x2[Operation.DIRECT_METHOD] == 24 * 1024 / 4 * 2
    assert s3x2[Operation.CONNECT] == 12000


def test_bad_tiers_and_units() -> None:
    with pytest.raises(ValueError):
        tier_limits("off")
    with pytest.raises(ValueError):
        tier_limits("s4")
    with pytest.raises(ValueError):
        tier_limits("s1", 0)
    assert Quota.for_tier("off") is None


def test_concurrent_jobs_per_tier() -> None:
    assert [max_concurrent_jobs(t) for t in ("free", "s1", "s2", "s3")] == [1, 1, 5, 10]


def test_method_cost_is_in_4kb_blocks() -> None:
    assert [method_cost(n) for n in (0, 1, 4096, 4097, 40960)] == [1, 1, 1, 2, 10]


def test_bucket_bursts_then_queues_then_refuses() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=10, clock=clock)
    assert [bucket.reserve(1, max_delay=0.5) for _ in range(10)] == [0.0] * 10
    delays = [bucket.reserve(1, max_delay=0.5) for _ in range(5)]
    assert delays == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert bucket.reserve(1, max_delay=0.5) is None  # the queue is full
    assert bucket.retry_after(1, max_delay=0.5) == pytest.approx(0.1)
    clock.now += 0.1
    assert bucket.reserve(1, max_delay=0.5) == pytest.approx(0.5)
    clock.now += 100  # refills to capacity, no more
    assert bucket.tokens == 10


def test_bucket_charges_big_costs_as_capacity() -> None:
    bucket = TokenBucket(rate=40, capacity=40, clock=Clock())
    assert bucket.reserve(100) == 0.0
    assert bucket.reserve(1) is None


def test_quota_raises_azure_throttling_error_with_retry_after() -> None:
    clock = Clock()
    quota = Quota({Operation.TWIN_READ: 2}, burst_seconds=1, max_delay=0, clock=clock)
    assert quota.reserve(Operation.TWIN_READ) == 0.0
    assert quota.reserve(Operation.TWIN_READ) == 0.0
    with pytest.raises(ThrottledError) as err:
        quota.reserve(Operation.TWIN_READ)
    exc = err.value
    assert (exc.status_code, exc.error_code, exc.error_name) == (429, 429001, "ThrottlingException")
    assert exc.retryable and exc.retry_after == 1.0
    assert quota.throttled[Operation.TWIN_READ] == 1
    assert quota.reserve(Operation.QUERY) == 0.0  # not limited by this quota
    clock.now += 0.5
    assert quota.reserve(Operation.TWIN_READ) == 0.0


def test_slow_limits_still_admit_one_operation() -> None:
    quota = Quota.for_tier("s1", clock=Clock(), max_delay=0)
    assert quota is not None and quota.name == "S1 x1"
    assert quota.reserve(Operation.QUERY) == 0.0  # 20/min: a bucket of at least one
    with pytest.raises(ThrottledError) as err:
        quota.reserve(Operation.QUERY)
    assert err.value.retry_after == 3.0


async def test_acquire_waits_out_the_queue() -> None:
    quota = Quota({Operation.TWIN_UPDATE: 20}, burst_seconds=0.05, max_delay=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await quota.acquire(Operation.TWIN_UPDATE)
    await quota.acquire(Operation.TWIN_UPDATE)
    assert loop.time() - start >= 0.04  # the second waited its turn
    assert quota.delayed[Operation.TWIN_UPDATE] == 1


@pytest.mark.parametrize(
    ("method", "path", "op"),
    [
        ("GET", "/twins/d1", Operation.TWIN_READ),
        ("PATCH", "/twins/d1", Operation.TWIN_UPDATE),
        ("PUT", "/twins/d1", Operation.TWIN_UPDATE),
        ("POST", "/twins/d1/methods", Operation.DIRECT_METHOD),
        ("POST", "/devices/query", Operation.QUERY),
        ("PUT", "/jobs/v2/j1", Operation.JOBS),
        ("GET", "/jobs/v2/query", Operation.JOBS),
        ("POST", "/jobs/v2/j1/cancel", Operation.JOBS),
        ("GET", "/devices", Operation.REGISTRY),
        ("POST", "/devices", Operation.REGISTRY),
        ("DELETE", "/devices/d1", Operation.REGISTRY),
        ("GET", "/healthz", None),
        ("GET", "/iot-flows/changes", None),
    ],
)
def test_rest_operation_classes(method: str, path: str, op: Operation | None) -> None:
    assert operation_of(method, path) is op


def test_device_publish_classes() -> None:
    assert device_publish_operation("$iothub/twin/GET/?$rid=1") is Operation.TWIN_READ
    assert device_publish_operation("$iothub/twin/PATCH/properties/reported/?$rid=1") is Operation.TWIN_UPDATE
    assert device_publish_operation("devices/d1/messages/events/") is Operation.D2C
    assert device_publish_operation("$iothub/methods/res/200/?$rid=1") is None


def test_setting_defaults_off_and_validates() -> None:
    assert HubSettings().quota is QuotaTier.OFF and HubSettings().quota_units == 1
    assert HubSettings(quota="s2", quota_units=4).quota is QuotaTier.S2
    with pytest.raises(ValueError):
        HubSettings(quota="s9")
    with pytest.raises(ValueError):
        HubSettings(quota_units=0)


def test_jobs_device_operations_per_tier() -> None:
    assert tier_limits("s1")[Operation.JOB_DEVICE_OP] == 10
    assert tier_limits("s2", 20)[Operation.JOB_DEVICE_OP] == 20
    assert tier_limits("s3", 2)[Operation.JOB_DEVICE_OP] == 100


async def test_pace_queues_without_bound_and_paced_wraps_only_named_calls() -> None:
    clock = Clock()
    quota = Quota({Operation.JOB_DEVICE_OP: 1000}, burst_seconds=0.001, clock=clock, max_delay=0)

    class Target:
        calls = 0

        async def update(self, x: int) -> int:
            self.calls += 1
            return x * 2

        async def get(self) -> str:
            return "free"

    paced = Paced(Target(), ("update",), lambda: quota)
    assert [await paced.update(i) for i in range(5)] == [0, 2, 4, 6, 8]  # never refused
    assert quota.delayed[Operation.JOB_DEVICE_OP] == 4
    assert await paced.get() == "free"
    assert Paced(Target(), ("update",), lambda: None)  # no quota: calls pass straight through
