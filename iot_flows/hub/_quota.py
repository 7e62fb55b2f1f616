"""Azure IoT Hub's per-tier throttles, on demand (``hub serve --quota s1``).

IoT Hub limits each class of operation per hub (docs/iothub-reference.md §6.1, D-QUOTA). This module
is the pure part: the documented limits per tier and unit count
(:func:`tier_limits`), one token bucket per operation class (:class:`TokenBucket`,
clock injectable) and :class:`Quota`, which admits, delays or refuses an operation.

Behaviour (docs/iothub-reference.md §6.3 "Traffic shaping"): a bucket holds ``burst_seconds`` of the
limit, so short bursts pass at once; above that, operations are queued (delayed) at
the limit rate while the queue is at most ``max_delay`` seconds long; beyond that the
hub answers 429 ``ThrottlingException`` (429001). The hooks that apply it live at the
boundaries: the REST middleware (``iot_flows.hub.api._throttle``) and the MQTT server
(device connections, device twin requests, telemetry).

Limits that are not rates are applied elsewhere: concurrent jobs per tier
(docs/iothub-reference.md §6.2, 429004) through the jobs engine's ``max_concurrent_jobs``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from enum import Enum

from iot_flows._exceptions import ThrottledError
from iot_flows._settings import QuotaTier

__all__ = [
    "METHOD_METER_BYTES",
    "Operation",
    "Paced",
    "Quota",
    "TokenBucket",
    "device_publish_operation",
    "max_concurrent_jobs",
    "method_cost",
    "tier_limits",
]

#: Direct methods are metered in 4 KB blocks (request and response; docs/iothub-reference.md §6.1).
METHOD_METER_BYTES = 4096


class Operation(str, Enum):
    """An IoT Hub throttle (docs/iothub-reference.md §6.1); the value is the name used in messages."""

    TWIN_READ = "twin reads"
    TWIN_UPDATE = "twin updates"
    JOBS = "jobs operations"
    JOB_DEVICE_OP = "jobs device operations"  #: paced (queued without bound), never refused
    DIRECT_METHOD = "direct methods"  #: cost: 4 KB blocks of payload
    QUERY = "queries"
    REGISTRY = "identity registry operations"
    CONNECT = "new device connections"
    D2C = "device-to-cloud sends"


def tier_limits(tier: QuotaTier | str, units: int = 1) -> dict[Operation, float]:
    """IoT Hub's documented throttles for ``tier`` with ``units`` units, per second.

    ``DIRECT_METHOD`` is in 4 KB blocks per second (160 KB/s/unit on S1 = 40 blocks/s).
    Free has S1's column (docs/iothub-reference.md §6.1 "Free / S1"). Raises ``ValueError`` for
    ``off`` or an unknown tier, or fewer than one unit.
    """
    tier = QuotaTier(tier)
    if units < 1:
        raise ValueError(f"units must be at least 1, got {units}")
    u = float(units)
    per_min = 1 / 60
    kb = 1024 / METHOD_METER_BYTES  # blocks per KB
    if tier in (QuotaTier.FREE, QuotaTier.S1):
        return {
            Operation.TWIN_READ: 100.0,
            Operation.TWIN_UPDATE: 50.0,
            Operation.JOBS: 100 * per_min * u,
            Operation.JOB_DEVICE_OP: 10.0,
            Operation.DIRECT_METHOD: 160 * kb * u,
            Operation.QUERY: 20 * per_min * u,
            Operation.REGISTRY: 100 * per_min * u,
            Operation.CONNECT: max(100.0, 12 * u),
            Operation.D2C: max(100.0, 12 * u),
        }
    if tier is QuotaTier.S2:
        return {
            Operation.TWIN_READ: max(100.0, 10 * u),
            Operation.TWIN_UPDATE: max(50.0, 5 * u),
            Operation.JOBS: 100 * per_min * u,
            Operation.JOB_DEVICE_OP: max(10.0, u),
            Operation.DIRECT_METHOD: 480 * kb * u,
            Operation.QUERY: 20 * per_min * u,
            Operation.REGISTRY: 100 * per_min * u,
            Operation.CONNECT: 120 * u,
            Operation.D2C: 120 * u,
        }
    if tier is QuotaTier.S3:
        return {
            Operation.TWIN_READ: 500 * u,
            Operation.TWIN_UPDATE: 250 * u,
            Operation.JOBS: 5000 * per_min * u,
            Operation.JOB_DEVICE_OP: 50 * u,
            Operation.DIRECT_METHOD: 24 * 1024 * kb * u,
            Operation.QUERY: 1000 * per_min * u,
            Operation.REGISTRY: 5000 * per_min * u,
            Operation.CONNECT: 6000 * u,
            Operation.D2C: 6000 * u,
        }
    raise ValueError("the 'off' tier has no throttles")


def max_concurrent_jobs(tier: QuotaTier | str) -> int:
    """Active jobs a tier allows at once (docs/iothub-reference.md §6.2): 1 (Free, S1), 5 (S2), 10 (S3)."""
    return {QuotaTier.FREE: 1, QuotaTier.S1: 1, QuotaTier.S2: 5, QuotaTier.S3: 10}[QuotaTier(tier)]


def device_publish_operation(topic: str) -> Operation | None:
    """The throttle a device's MQTT publish counts against, or None.

    Twin GET: twin reads; reported PATCH: twin updates; telemetry: device-to-cloud sends.
    Method responses are not refused (the hub asked for them).
    """
    if topic.startswith("$iothub/twin/GET/"):
        return Operation.TWIN_READ
    if topic.startswith("$iothub/twin/PATCH/"):
        return Operation.TWIN_UPDATE
    if topic.startswith("devices/"):
        return Operation.D2C
    return None


def method_cost(payload_bytes: int) -> int:
    """Direct-method meter blocks for a payload of ``payload_bytes`` (at least one)."""
    return max(1, math.ceil(payload_bytes / METHOD_METER_BYTES))


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``capacity`` saved up.

    :meth:`reserve` may take the balance negative by up to ``max_delay`` seconds' worth:
    the caller then waits that long (a queue served at the limit rate). Pure: time comes
    from ``clock`` (seconds, monotonic).
    """

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        """The balance now (negative while a queue is waiting)."""
        self._refill()
        return self._tokens

    def reserve(self, cost: float = 1.0, max_delay: float = 0.0) -> float | None:
        """Take ``cost`` tokens; return the seconds to wait before proceeding (0.0: now),
        or None, taking nothing, when that wait would exceed ``max_delay``.

        A cost above ``capacity`` is charged as ``capacity`` so that it can pass at all.
        """
        self._refill()
        cost = min(cost, self.capacity)
        after = self._tokens - cost
        if after >= 0:
            self._tokens = after
            return 0.0
        delay = -after / self.rate
        if delay > max_delay:
            return None
        self._tokens = after
        return delay

    def retry_after(self, cost: float = 1.0, max_delay: float = 0.0) -> float:
        """Seconds until :meth:`reserve` would admit ``cost`` (0.0 when it would now)."""
        self._refill()
        missing = min(cost, self.capacity) - self._tokens - max_delay * self.rate
        return max(0.0, missing / self.rate)


class Quota:
    """One token bucket per throttled operation class of a hub.

    ``limits`` maps an operation to its rate per second (operations not listed are not
    throttled); ``burst_seconds`` of each rate may pass at once (at least one operation);
    ``max_delay`` is the longest an operation is queued before it is refused.
    """

    def __init__(
        self,
        limits: Mapping[Operation, float],
        *,
        burst_seconds: float = 1.0,
        max_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "custom",
    ) -> None:
        self.name = name
        self.max_delay = max_delay
        self.limits = dict(limits)
        self._buckets = {
            op: TokenBucket(rate, max(rate * burst_seconds, 1.0), clock) for op, rate in self.limits.items()
        }
        #: Operations refused (429) so far, per class.
        self.throttled: Counter[Operation] = Counter()
        #: Operations delayed (traffic shaping) so far, per class.
        self.delayed: Counter[Operation] = Counter()

    @classmethod
    def for_tier(cls, tier: QuotaTier | str, units: int = 1, **kwargs: float) -> Quota | None:
        """The throttles of an IoT Hub tier, or None for ``off``."""
        tier = QuotaTier(tier)
        if tier is QuotaTier.OFF:
            return None
        return cls(tier_limits(tier, units), name=f"{tier.value.upper()} x{units}", **kwargs)  # type: ignore[arg-type]

    def reserve(self, op: Operation, cost: float = 1.0) -> float:
        """Admit one ``op`` costing ``cost``; return the seconds to delay it (0.0: none).

        Raises:
            ThrottledError: 429001 ``ThrottlingException``, ``retry_after`` in seconds,
                when the operation would wait longer than ``max_delay``.
        """
        bucket = self._buckets.get(op)
        if bucket is None:
            return 0.0
        delay = bucket.reserve(cost, self.max_delay)
        if delay is None:
            self.throttled[op] += 1
            wait = bucket.retry_after(cost, self.max_delay)
            raise ThrottledError(
                f"Throttled: {op.value} exceed this hub's limit of {self.limits[op]:g}/s ({self.name}). "
                "Back off and retry.",
                retry_after=max(1.0, math.ceil(wait)),
            )
        if delay > 0:
            self.delayed[op] += 1
        return delay

    async def pace(self, op: Operation, cost: float = 1.0) -> None:
        """Wait for ``op``'s turn however long the queue (jobs device operations: Azure
        slows a job down to the throttle rather than failing it; docs/iothub-reference.md §6.3)."""
        bucket = self._buckets.get(op)
        if bucket is not None:
            delay = bucket.reserve(cost, math.inf)
            if delay:
                self.delayed[op] += 1
                await asyncio.sleep(delay)

    async def acquire(self, op: Operation, cost: float = 1.0) -> None:
        """:meth:`reserve`, then wait out the delay (traffic shaping). Raises ThrottledError."""
        delay = self.reserve(op, cost)
        if delay > 0:
            await asyncio.sleep(delay)


class Paced:
    """``target`` with its coroutine methods ``names`` paced by ``quota()``'s ``op``.

    Wraps the twin service and method invoker the jobs engine uses, so that jobs run no
    faster than the tier's "jobs device operations" throttle (docs/iothub-reference.md §6.1).
    """

    def __init__(self, target: object, names: tuple[str, ...], quota: Callable[[], Quota | None],
                 op: Operation = Operation.JOB_DEVICE_OP) -> None:
        self._target, self._names, self._quota, self._op = target, names, quota, op

    def pacing(self) -> bool:
        """True while ``quota()`` applies: calls must go through the paced names."""
        return self._quota() is not None

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._target, name)
        if name not in self._names:
            return attr

        async def paced(*args: object, **kwargs: object) -> object:
            quota = self._quota()
            if quota is not None:
                await quota.pace(self._op)
            return await attr(*args, **kwargs)

        return paced
