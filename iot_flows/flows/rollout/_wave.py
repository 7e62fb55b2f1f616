"""One wave: hub jobs over its devices, followed while they run, until every device has a verdict.

Each poll round reads what changed (:mod:`._poll`): the jobs' new finished ``devices.jobs``
records (a 4xx answer is a rejection at once) and the twins of accepted devices that
reached an outcome, then applies the per-device and per-step
timeouts, updates the live counts and checks the abort criteria: an abort cancels the
running jobs at once. Transient failures are retried, in new jobs over their id lists,
after the retry policy's backoff. A rate policy starts devices in chunks over time.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger

from iot_flows.blocks import HubConnection
from iot_flows.client import device_id_conditions
from iot_flows.flows._common import new_job_id
from iot_flows.flows.rollout._mechanisms import Failure, Mechanism, classify_record
from iot_flows.flows.rollout._models import RolloutRequest, WaveResult
from iot_flows.flows.rollout._policies import Policies, WaveTally
from iot_flows.flows.rollout._poll import JobMark, read_round
from iot_flows.tasks import cancel_job

__all__ = ["WaveRun", "WaveRunner", "job_prefix"]


def job_prefix(request: RolloutRequest) -> str:
    """``rollout-<id>-``: every hub job of a rollout starts with it (the id cut to 24 characters)."""
    return "rollout-" + re.sub(r"[^A-Za-z0-9-]+", "-", request.key)[:24].strip("-") + "-"



@dataclass
class WaveRun:
    """A wave's result, the abort reason (None: no criterion passed), who succeeded, last counts."""

    result: WaveResult
    abort: str | None
    succeeded: list[str]
    tally: WaveTally


@dataclass
class _Device:
    job: str | None = None
    accepted_at: str = ""
    accepted_mono: float | None = None
    step: Any = None
    step_mono: float = 0.0
    verdict: bool | Failure | None = None


@dataclass
class _Attempt:
    devices: dict[str, _Device]
    unstarted: list[str]
    marks: dict[str, JobMark] = field(default_factory=dict)  # job id -> what was read of it


class WaveRunner:
    """Runs waves for one rollout (``progress`` gets the live :class:`WaveTally` each round)."""

    def __init__(
        self,
        conn: HubConnection,
        request: RolloutRequest,
        mechanism: Mechanism,
        policies: Policies,
        progress: Callable[[str, WaveTally], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn, self.request, self.mechanism, self.policies = conn, request, mechanism, policies
        self.progress, self.clock = progress, clock
        self.task_runs = 0

    async def run(self, index: int, label: str, ids: list[str], condition: str | None, kind: str = "wave",
                  adopted: dict[str, str] | None = None) -> WaveRun:  # fmt: skip
        """Update ``ids`` (the first attempt over ``condition`` when given). ``adopted``: devices
        an earlier run already sent the update to (id -> its job record's ``startTimeUtc``):
        the first attempt follows their twins without sending it again."""
        adopted = {d: t for d, t in (adopted or {}).items() if d in set(ids)}
        if adopted:
            condition = None  # the others by id lists
        logger = get_run_logger()
        t0, runs0 = self.clock(), self.task_runs
        tally = WaveTally(total=len(ids))
        tally.offline = await self._offline(ids)
        result = WaveResult(index=index, devices=len(ids), kind=kind, offline_at_start=tally.offline)
        succeeded: set[str] = set()
        final: dict[str, Failure] = {}
        todo, attempt, abort = sorted(ids), 0, None
        while todo:
            attempt += 1
            last = not self.policies.retry.should_retry(True, attempt)
            outcome, abort = await self._attempt(label, attempt, todo, condition if attempt == 1 else None, last,
                                                 tally, succeeded, final, adopted if attempt == 1 else {})  # fmt: skip
            retry = [d for d, v in outcome.items() if isinstance(v, Failure) and not last and v.transient]
            tally.retrying = 0
            for device_id, verdict in outcome.items():
                if verdict is True:
                    succeeded.add(device_id)
                elif isinstance(verdict, Failure) and device_id not in retry:
                    final[device_id] = verdict
            result.attempts = attempt
            if abort or not retry:
                for device_id in retry:  # aborted: what would have been retried ends as it is
                    final[device_id] = outcome[device_id]
                break
            delay = self.policies.retry.delay(attempt)
            result.retried += len(retry)
            logger.info("%s: retrying %d devices (transient failures) in %.1f s", label, len(retry), delay)
            await asyncio.sleep(delay)
            todo = sorted(retry)
        result.updated = len(succeeded)
        result.failed = sorted(d for d, f in final.items() if f.type == "failed")
        result.rejected = sorted(d for d, f in final.items() if f.type == "rejected")
        result.timed_out = sorted(d for d, f in final.items() if f.type == "timed_out")
        result.success_ratio = round(len(succeeded) / len(ids), 4) if ids else 1.0
        result.seconds = round(self.clock() - t0, 2)
        result.task_runs = self.task_runs - runs0
        self._count(tally, _Attempt({}, []), True, succeeded, final)
        return WaveRun(result, abort, sorted(succeeded), tally)

    async def _offline(self, ids: list[str]) -> int:
        if not self.request.wait_for_offline_devices or not ids:
            return 0
        from iot_flows.tasks import query_twins

        count = 0
        for _, cond in device_id_conditions(ids):
            self.task_runs += 1
            count += len(await query_twins(self.conn, f"SELECT deviceId FROM devices WHERE ({cond}) AND connectionState = 'Disconnected'"))
        return count

    async def _start(self, state: _Attempt, ids: list[str], condition: str | None, tag: str) -> None:
        parts = [(ids, condition)] if condition else device_id_conditions(ids)
        timeout = int(self.request.device_timeout_seconds) + 60
        for part, (part_ids, cond) in enumerate(parts):
            job_id = new_job_id(f"{job_prefix(self.request)}{tag}p{len(state.marks) + part + 1}")
            self.task_runs += 1
            await self.mechanism.start(self.conn, job_id, cond, timeout)
            state.marks[job_id] = JobMark()
            for device_id in part_ids:
                state.devices[device_id].job = job_id

    async def _cancel(self, state: _Attempt) -> None:
        for job_id, mark in state.marks.items():
            if not mark.terminal:
                self.task_runs += 1
                try:
                    await cancel_job(self.conn, job_id)
                except Exception as exc:  # already terminal: nothing left to stop
                    get_run_logger().info("cancel %s: %s", job_id, exc)

    async def _attempt(self, label: str, attempt: int, ids: list[str], condition: str | None, last: bool,
                       tally: WaveTally, succeeded: set[str], final: dict[str, Failure],
                       adopted: dict[str, str]) -> tuple[dict[str, Any], str | None]:  # fmt: skip
        req, rate = self.request, self.policies.rate
        state = _Attempt({d: _Device() for d in ids}, [d for d in ids if d not in adopted])
        for device_id, started in adopted.items():
            device = state.devices[device_id]
            device.accepted_at, device.accepted_mono = started, self.clock()
            device.step_mono = device.accepted_mono
        tag = re.sub(r"[^A-Za-z0-9-]+", "", label.replace("/", "of").replace(".", "-")) + f"a{attempt}"
        interval = min(req.poll_interval_seconds, 1.0)
        try:
            while True:
                now = self.clock()
                if state.unstarted:
                    n = len(state.unstarted) if rate is None else rate.release(now, len(succeeded) + self._ok(state))
                    chunk, state.unstarted = state.unstarted[:n], state.unstarted[n:]
                    if chunk:
                        await self._start(state, chunk, condition if rate is None else None, tag)
                await self._read(state, now)
                self._timeouts(state, now)
                self._count(tally, state, last, succeeded, final)
                await self.progress(f"{label}, attempt {attempt}", tally)
                abort = self.policies.abort.verdict(tally)
                if abort:
                    await self._cancel(state)
                    return {d: s.verdict for d, s in state.devices.items()}, abort
                if not state.unstarted and all(s.verdict is not None for s in state.devices.values()):
                    return {d: s.verdict for d, s in state.devices.items()}, None
                await asyncio.sleep(interval)
                interval = min(interval * 1.5, max(req.poll_interval_seconds, 1.0), 5.0)
        except asyncio.CancelledError:
            await self._cancel(state)
            raise

    @staticmethod
    def _ok(state: _Attempt) -> int:
        return sum(1 for s in state.devices.values() if s.verdict is True)

    async def _read(self, state: _Attempt, now: float) -> None:
        """One round's news (only what changed, see :mod:`._poll`) applied to the devices."""
        waiting = sorted(d for d, s in state.devices.items() if s.accepted_mono is not None and s.verdict is None)
        outcome = None if self.request.step_timeout_seconds else self.mechanism.outcome_condition()
        if not waiting and all(m.terminal for m in state.marks.values()):
            return
        self.task_runs += 1
        news, state.marks = await read_round(self.conn, state.marks, waiting, outcome)
        for job_id, records in news.records.items():
            for record in records:
                device = state.devices.get(str(record.get("deviceId", "")))
                if device is None or device.verdict is not None:
                    continue
                if record.get("status") == "completed" and device.accepted_mono is None:
                    device.accepted_at, device.accepted_mono = str(record.get("startTimeUtc") or ""), self.clock()
                    device.step_mono = device.accepted_mono
                elif record.get("status") == "failed":
                    device.verdict = classify_record(record)
                elif record.get("status") == "canceled":
                    device.verdict = Failure("failed", False, "canceled")
            mark = state.marks[job_id]
            if mark.terminal:  # devices the job never selected: their twins decide
                for device_id, device in state.devices.items():
                    if device.job == job_id and device_id not in mark.seen and device.accepted_mono is None and device.verdict is None:
                        device.accepted_mono, device.step_mono = self.clock(), self.clock()
        for device_id, twin in news.twins.items():
            device = state.devices[device_id]
            if device.accepted_mono is None or device.verdict is not None:
                continue
            device.verdict = self.mechanism.check(twin, device.accepted_at)
            step = self.mechanism.step(twin)
            if step != device.step:
                device.step, device.step_mono = step, now

    def _timeouts(self, state: _Attempt, now: float) -> None:
        req = self.request
        for device in state.devices.values():
            if device.verdict is not None or device.accepted_mono is None:
                continue
            if now - device.accepted_mono > req.device_timeout_seconds:
                device.verdict = Failure("timed_out", True, f"no verdict after {req.device_timeout_seconds:.0f} s")
            elif req.step_timeout_seconds and now - device.step_mono > req.step_timeout_seconds:
                device.verdict = Failure("timed_out", True, f"no progress for {req.step_timeout_seconds:.0f} s")

    @staticmethod
    def _count(tally: WaveTally, state: _Attempt, last: bool, succeeded: set[str], final: dict[str, Failure]) -> None:
        counts = {"failed": 0, "rejected": 0, "timed_out": 0}
        for f in final.values():
            counts[f.type] += 1
        ok, retrying = len(succeeded), 0
        for device in state.devices.values():
            if device.verdict is True:
                ok += 1
            elif isinstance(device.verdict, Failure):
                if device.verdict.transient and not last:
                    retrying += 1
                else:
                    counts[device.verdict.type] += 1
        tally.succeeded, tally.retrying = ok, retrying
        tally.failed, tally.rejected, tally.timed_out = counts["failed"], counts["rejected"], counts["timed_out"]
