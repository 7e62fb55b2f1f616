"""The rollout's rules as small objects: gate, abort, retry, window, rate and health.

Each policy is plain logic over a :class:`WaveTally` (counts of one wave) with time
injected (``now`` arguments, a ``sleep`` callable), so each is unit-tested without a hub;
the flow composes them (:func:`policies_for`). A new rule is one new class here and one
call in the rollout loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from iot_flows.flows.rollout._models import AbortCriterion, HealthGate, RateLimit, RolloutRequest, Window

__all__ = [
    "AbortPolicy",
    "GatePolicy",
    "HealthPolicy",
    "Policies",
    "RatePolicy",
    "RetryPolicy",
    "WaveTally",
    "WindowPolicy",
    "policies_for",
]


@dataclass
class WaveTally:
    """Devices of one wave by state. Failures count here only once final (no retry left)."""

    total: int
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    retrying: int = 0
    offline: int = 0

    @property
    def finished(self) -> int:
        """Devices with a final outcome (succeeded, failed, rejected or timed out)."""
        return self.succeeded + self.failed + self.rejected + self.timed_out

    @property
    def in_progress(self) -> int:
        """Devices started and not finished nor waiting for a retry."""
        return max(self.total - self.finished - self.retrying, 0)

    def describe(self) -> str:
        """``12/40 finished: 10 succeeded, 1 failed, 1 rejected, 0 timed out; 3 retrying, 25 in progress``."""
        text = (f"{self.finished}/{self.total} finished: {self.succeeded} succeeded, {self.failed} failed, "
                f"{self.rejected} rejected, {self.timed_out} timed out")  # fmt: skip
        extra = [f"{n} {what}" for n, what in ((self.retrying, "retrying"), (self.in_progress, "in progress"),
                                               (self.offline, "offline at start")) if n]  # fmt: skip
        return text + (f"; {', '.join(extra)}" if extra else "")


@dataclass
class GatePolicy:
    """At a wave's end: continue only when its success ratio reaches ``min_success_ratio``."""

    min_success_ratio: float

    def verdict(self, tally: WaveTally) -> str | None:
        """None to continue, else why the gate holds the rollout."""
        ratio = tally.succeeded / tally.total if tally.total else 1.0
        if ratio + 1e-9 < self.min_success_ratio:
            return f"success {ratio:.0%} below the gate ({self.min_success_ratio:.0%})"
        return None


@dataclass
class AbortPolicy:
    """Abort criteria by failure type, checked after every poll round of a wave."""

    criteria: list[AbortCriterion]

    def verdict(self, tally: WaveTally) -> str | None:
        """None, or the first criterion passed (``rejected 3/10 = 30% > 20%``)."""
        finished = tally.finished
        if not finished:
            return None
        for c in self.criteria:
            if finished < c.min_finished and finished < tally.total:
                continue
            count = tally.failed + tally.rejected + tally.timed_out if c.failure_type == "all" else getattr(tally, c.failure_type)
            if count / finished > c.threshold_ratio + 1e-9:
                what = "failures" if c.failure_type == "all" else c.failure_type.replace("_", " ")
                return f"{what} {count}/{finished} = {count / finished:.0%} above {c.threshold_ratio:.0%}"
        return None


@dataclass
class RetryPolicy:
    """Transient failures (timeouts, ``downloadFailed``, 5xx) are retried with exponential
    backoff and jitter; rejections (4xx) and other failures never."""

    retries: int
    backoff_seconds: float
    max_backoff_seconds: float = 600.0
    rng: random.Random = field(default_factory=random.Random)

    def should_retry(self, transient: bool, attempt: int) -> bool:
        """``attempt`` counts from 1 (the first try)."""
        return transient and attempt <= self.retries

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``: backoff * 2^(attempt-1), capped, times 0.5..1.5."""
        base = min(self.backoff_seconds * 2 ** (attempt - 1), self.max_backoff_seconds)
        return float(base * self.rng.uniform(0.5, 1.5))


@dataclass
class WindowPolicy:
    """Start waves only inside a maintenance window."""

    window: Window | None

    def seconds_until_open(self, now: datetime | None = None) -> float:
        """0 without a window or when open, else seconds until it opens."""
        return self.window.seconds_until_open(now) if self.window else 0.0

    def opens_at(self, now: datetime | None = None) -> datetime:
        """When the window next opens (``now`` when open or without a window), UTC."""
        now = now or datetime.now(UTC)
        return now + timedelta(seconds=self.seconds_until_open(now))


@dataclass
class RatePolicy:
    """How many more devices may start now (a token bucket whose rate ramps up).

    ``release(now, successes)`` is called every poll round with a monotonic ``now`` in
    seconds and the wave's successes so far; it returns the number of devices to start.
    """

    limit: RateLimit
    _last: float | None = None
    _credit: float = 0.0

    def per_minute(self, successes: int) -> float:
        """The current rate: the ramp's step for ``successes``, capped by ``max_per_minute``."""
        if self.limit.base_per_minute is None:
            return float(self.limit.max_per_minute or 0)
        steps = successes // self.limit.successes_per_step
        rate = self.limit.base_per_minute * self.limit.increment_factor**steps
        return min(rate, self.limit.max_per_minute) if self.limit.max_per_minute else rate

    def release(self, now: float, successes: int) -> int:
        """How many devices may start now: credit earned since the last call at :meth:`per_minute` (the first call releases one)."""
        if self._last is None:  # the first call starts one minute's worth at the start rate... at most 1 s of it
            self._last, self._credit = now, 1.0
        self._credit += (now - self._last) * self.per_minute(successes) / 60.0
        self._last = now
        whole = int(self._credit)
        self._credit -= whole
        return whole


@dataclass
class HealthPolicy:
    """Bake time: ``count_healthy()`` must equal ``expected`` for ``hold_seconds`` in a row."""

    gate: HealthGate
    poll_interval: float = 2.0

    async def hold(
        self,
        count_healthy: Callable[[], Awaitable[int]],
        expected: int,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> str | None:
        """None once the condition held long enough, else why not (timeout)."""
        start = clock()
        since: float | None = None
        healthy = 0
        while True:
            healthy = await count_healthy()
            now = clock()
            if healthy >= expected:
                since = now if since is None else since
                if now - since >= self.gate.hold_seconds:
                    return None
            else:
                since = None
            if now - start >= self.gate.timeout_seconds:
                return (f"health gate: {healthy}/{expected} devices match {self.gate.condition} "
                        f"(must hold {self.gate.hold_seconds:.0f} s) after {self.gate.timeout_seconds:.0f} s")  # fmt: skip
            await sleep(self.poll_interval)


@dataclass
class Policies:
    """The policies one rollout runs under: gate, abort, retry, window and optional rate."""
    gate: GatePolicy
    abort: AbortPolicy
    retry: RetryPolicy
    window: WindowPolicy
    rate: RatePolicy | None
    health: HealthPolicy | None


def policies_for(request: RolloutRequest, rng: random.Random | None = None) -> Policies:
    """The policies a request asks for (``abort_failure_ratio`` is the ``all`` criterion)."""
    criteria = [*request.abort, AbortCriterion(failure_type="all", threshold_ratio=request.abort_failure_ratio,
                                               min_finished=request.abort_min_finished)]  # fmt: skip
    return Policies(
        gate=GatePolicy(request.min_success_ratio),
        abort=AbortPolicy(criteria),
        retry=RetryPolicy(request.retries, request.retry_backoff_seconds, request.retry_max_backoff_seconds,
                          rng or random.Random()),  # fmt: skip
        window=WindowPolicy(request.maintenance_window),
        rate=RatePolicy(request.rate) if request.rate else None,
        health=HealthPolicy(request.health, poll_interval=min(request.poll_interval_seconds, 2.0)) if request.health else None,
    )
