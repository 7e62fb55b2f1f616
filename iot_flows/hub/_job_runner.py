"""One job's device fan-out: invoking methods or updating twins, recording outcomes, fencing.

:class:`JobRunner` is the part of :class:`iot_flows.hub._job_engine.JobEngine` that runs a
started job over its pending devices with bounded concurrency: devices are marked
``running`` (one transaction per group) *before* a request is sent, outcomes are flushed
in batches, and in a cluster every write and call is fenced by the node's job lease
(:class:`JobLease`), so a node whose lease lapsed stops touching the job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from iot_flows._exceptions import DeviceNotOnlineError, GatewayTimeoutError, HubError
from iot_flows._settings import JobSettings
from iot_flows._tasks import BackgroundTasks
from iot_flows._types import MethodResult
from iot_flows.hub._job_repository import DeviceOutcome, JobRepository
from iot_flows.hub._job_requests import JobRequest, format_time
from iot_flows.hub._methods import MethodCall
from iot_flows.hub._sessions import SessionRegistry, Subscription
from iot_flows.hub._twins import TwinService
from iot_flows.jobs import DeviceJobStatus, JobType
from iot_flows.store import HubStore

__all__ = ["JobLease", "JobRunner"]

_D = DeviceJobStatus


class JobLease(Protocol):
    """Who may run a job when several hub nodes share the store."""

    async def acquire(self, job_id: str) -> bool:
        """True when this node may run ``job_id`` now (lease taken or already held)."""

    async def release(self, job_id: str) -> None:
        """Give up the lease on ``job_id``."""

    def valid(self) -> bool:
        """False once this node went longer than its lease without renewing it (paused,
        starved): another node may run its jobs now, so it must stop writing and invoking."""
        ...


class _LeaseLost(Exception):
    """This node's lease lapsed while it ran the job: another node may own it now."""


_stamp_cache: tuple[int, str] = (-1, "")


def _stamp() -> str:
    """``format_time(_now())``, formatted at most once per millisecond.

    A job stamps every device record twice (start and end); at 10,000 devices/s
    formatting each one was a tenth of the hub's CPU (bench.profile_job).
    """
    global _stamp_cache
    now = time.time()
    ms = int(now * 1000)
    if ms != _stamp_cache[0]:
        _stamp_cache = (ms, format_time(datetime.fromtimestamp(now, UTC)))
    return _stamp_cache[1]


_PENDING, _RUNNING = _D.PENDING.value, _D.RUNNING.value
_TIMED_OUT_IN_CALL = {"code": "JobTimedOut", "description": "maxExecutionTimeInSeconds elapsed during the call"}


def _result_outcome(device_id: str, started: str, result: MethodResult) -> DeviceOutcome:
    """A device's record for the device's answer (a non-2xx status fails the device)."""
    outcome = {"deviceMethodResponse": result.to_json()}
    if result.succeeded:
        return device_id, _D.COMPLETED, started, _stamp(), outcome, None
    error = {"code": "DeviceMethodFailed", "description": f"The device answered with status {result.status}."}
    return device_id, _D.FAILED, started, _stamp(), outcome, error


def _call_outcome(device_id: str, started: str, future: asyncio.Future[MethodResult]) -> DeviceOutcome:
    """A device's record once a call made by ``MethodInvoker.start`` ended."""
    if future.cancelled():
        return device_id, _D.FAILED, started, _stamp(), None, _TIMED_OUT_IN_CALL
    exc = future.exception()
    if exc is None:
        return _result_outcome(device_id, started, future.result())
    if isinstance(exc, HubError):  # 504101: no answer within responseTimeoutInSeconds
        return device_id, _D.FAILED, started, _stamp(), None, {"code": exc.error_name, "description": exc.message}
    return device_id, _D.FAILED, started, _stamp(), None, {"code": "InternalError", "description": repr(exc)}


class _Run:
    """In-memory state of one running job."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class JobRunner:
    """Runs one started job's pending devices (mixed into the engine, which owns the state)."""

    settings: JobSettings
    lease: JobLease | None
    held_elsewhere: Callable[[str], Awaitable[bool]] | None
    wait_online: Callable[[str, float], Awaitable[None]] | None
    invoke_method: Callable[[str, MethodCall], Awaitable[MethodResult]] | None
    _store: HubStore
    _repo: JobRepository
    _twins: TwinService
    _sessions: SessionRegistry
    _invoke_method: Callable[[str, MethodCall], Awaitable[MethodResult]]
    _start_method: Callable[[str, MethodCall], asyncio.Future[MethodResult] | None] | None
    _pacing: Callable[[], bool]
    #: Record counts by status of the method jobs fanning out here, kept equal to what is
    #: committed (updated after each commit): a running job's statistics without a
    #: ``GROUP BY`` over its records on every ``GET /jobs/v2/{id}``.
    _tallies: dict[str, dict[str, int]]

    def _fence(self) -> None:
        """Raise _LeaseLost when a cluster node's lease lapsed (checked before every write and call)."""
        if self.lease is not None and not self.lease.valid():
            raise _LeaseLost

    def _tally(self, job_id: str, moves: Iterable[tuple[str, str]]) -> None:
        """Apply committed record moves ``(from status, to status)`` to the job's tally."""
        tally = self._tallies.get(job_id)
        if tally is None:
            return  # dropped (cancelled here or by another node): the store answers
        for old, new in moves:
            tally[old] = tally.get(old, 0) - 1
            tally[new] = tally.get(new, 0) + 1
        if any(n < 0 for n in tally.values()):  # never expected: fall back to the store's counts
            del self._tallies[job_id]

    async def _fan_out(self, job_id: str, request: JobRequest, run: _Run, deadline: float) -> bool:
        """Run every pending device; return True if the deadline cut the job short."""
        loop = asyncio.get_running_loop()
        pending = await self._repo.device_ids(job_id, _D.PENDING)
        outcomes: list[DeviceOutcome] = []
        batch = self.settings.batch_size

        async def flush() -> None:
            if outcomes:
                self._fence()  # a lapsed lease writes nothing more: the new owner's records stand
                done = list(outcomes)
                outcomes.clear()
                async with self._store.transaction():
                    await self._repo.record(job_id, done, _stamp())
                # devices never sent (no start time) were pending; the others running
                self._tally(job_id, ((_RUNNING if o[2] is not None else _PENDING, o[1].value) for o in done))

        if request.type is JobType.SCHEDULE_UPDATE_TWIN:
            for start in range(0, len(pending), batch):
                if run.cancelled.is_set() or loop.time() > deadline:
                    break
                chunk = pending[start : start + batch]
                self._fence()
                async with self._store.transaction():
                    results = [await self._update_twin(d, request) for d in chunk]
                    await self._repo.record(job_id, results, _stamp())
                await asyncio.sleep(0)  # let device traffic through between chunks
            return loop.time() > deadline and bool(await self._repo.device_ids(job_id, _D.PENDING))

        counts = await self._repo.counts(job_id)
        if not run.cancelled.is_set():
            self._tallies[job_id] = counts
        sem = asyncio.Semaphore(self.settings.device_concurrency)
        tasks = BackgroundTasks(f"job {job_id}")
        flusher_stop = asyncio.Event()
        # Calls sent without a task (MethodInvoker.start): future -> device id.
        calls: dict[asyncio.Future[MethodResult], tuple[str, str]] = {}

        async def flusher() -> None:
            while not flusher_stop.is_set():
                try:
                    await asyncio.wait_for(flusher_stop.wait(), 0.1)
                except TimeoutError:
                    pass
                await flush()

        async def one(device_id: str) -> None:
            try:
                outcomes.append(await self._invoke(device_id, request, sem, deadline))
            except _LeaseLost:
                pass  # not invoked: the job's new owner decides
            finally:
                sem.release()

        def answered(future: asyncio.Future[MethodResult]) -> None:
            entry = calls.pop(future, None)
            if entry is None:
                return  # given up at the deadline (recorded there) or the job stopped here
            sem.release()
            outcomes.append(_call_outcome(entry[0], entry[1], future))

        call = request.method
        start_call = self._start_method
        flusher_task = loop.create_task(flusher())
        timed_out = False
        try:
            index = 0
            while index < len(pending):
                # Wait for one free slot, then take every other slot free right now: only
                # devices about to be sent are marked running (one transaction per group),
                # so after a crash no unsent device is mistaken for an in-flight one.
                try:
                    await asyncio.wait_for(sem.acquire(), max(deadline - loop.time(), 0.001))
                except TimeoutError:
                    break
                if run.cancelled.is_set() or loop.time() > deadline:
                    sem.release()
                    break
                group = [pending[index]]
                index += 1
                while index < len(pending) and len(group) < batch and not sem.locked():
                    await sem.acquire()  # free slot: returns without suspending
                    group.append(pending[index])
                    index += 1
                self._fence()
                started = _stamp()
                async with self._store.transaction():
                    await self._repo.mark_running(job_id, group, started)
                self._tally(job_id, [(_PENDING, _RUNNING)] * len(group))
                # A device subscribed here is called at once, without a task; the others
                # (offline, another node, a --quota pacing calls) take _invoke.
                direct = start_call is not None and call is not None and not self._pacing()
                for device_id in group:
                    future = start_call(device_id, call) if direct else None  # type: ignore[misc,arg-type]
                    if future is None:
                        tasks.spawn(one(device_id), name=f"job-{job_id}-{device_id}")
                    else:
                        calls[future] = (device_id, started)
                        future.add_done_callback(answered)
            if index < len(pending):
                status = _D.CANCELED if run.cancelled.is_set() else _D.FAILED
                err = None if status is _D.CANCELED else {"code": "JobTimedOut", "description": "not reached"}
                outcomes.extend((d, status, None, _stamp(), None, err) for d in pending[index:])
            waiting: set[asyncio.Future[Any]] = {*tasks.tasks, *calls}
            if waiting:
                _, still = await asyncio.wait(waiting, timeout=max(deadline - loop.time(), 0))
                if still:
                    timed_out = True
                    for future in still:
                        entry = calls.pop(future, None)
                        if entry is not None:
                            outcomes.append((entry[0], _D.FAILED, entry[1], _stamp(), None, _TIMED_OUT_IN_CALL))
                        future.cancel()
                    await asyncio.wait(still)
            timed_out = timed_out or loop.time() > deadline
        finally:
            flusher_stop.set()
            await flusher_task
            await flush()
            # Hub stopping mid-job: cancel the requests still in flight and await them; their
            # devices stay "running" in the store and become failed (HubRestarted) on resume.
            for future in list(calls):
                del calls[future]
                future.cancel()
            await tasks.close()
            self._tallies.pop(job_id, None)
        return timed_out

    async def _invoke(self, device_id: str, request: JobRequest, sem: asyncio.Semaphore, deadline: float) -> DeviceOutcome:
        assert request.method is not None
        loop = asyncio.get_running_loop()
        started = _stamp()
        call = request.method
        try:
            if self._sessions.subscribed_link(device_id, Subscription.METHODS) is None:
                elsewhere = self.held_elsewhere is not None and await self.held_elsewhere(device_id)
                if request.wait_for_offline_devices and not elsewhere:
                    sem.release()  # a parked device does not hold a concurrency slot
                    try:
                        if self.wait_online is not None:  # cluster: it may connect to any node
                            await self.wait_online(device_id, max(deadline - loop.time(), 0))
                        else:
                            await self._sessions.wait_for(device_id, Subscription.METHODS, max(deadline - loop.time(), 0))
                    finally:
                        await sem.acquire()
                elif call.connect_timeout == 0 and self._sessions.is_connected(device_id):
                    # Connected but its method SUBSCRIBE may still be in flight (docs/iothub-reference.md §9.6).
                    call = replace(call, connect_timeout=max(1, int(self.settings.subscribe_grace_seconds)))
                if call.connect_timeout == 0 and self.held_elsewhere is not None and await self.held_elsewhere(device_id):
                    # Connected to another hub node: its method SUBSCRIBE may still be in flight there.
                    call = replace(call, connect_timeout=max(1, int(self.settings.subscribe_grace_seconds)))
            self._fence()
            result = await (self.invoke_method or self._invoke_method)(device_id, call)
        except asyncio.CancelledError:
            return device_id, _D.FAILED, started, _stamp(), None, _TIMED_OUT_IN_CALL
        except (DeviceNotOnlineError, GatewayTimeoutError) as exc:
            return (device_id, _D.FAILED, started, _stamp(), None,
                    {"code": exc.error_name, "description": exc.message})  # fmt: skip
        return _result_outcome(device_id, started, result)

    async def _update_twin(self, device_id: str, request: JobRequest) -> DeviceOutcome:
        assert request.update_twin is not None
        started = _stamp()
        body = {k: v for k, v in request.update_twin.items() if k in ("tags", "properties")}
        props = body.get("properties")
        if isinstance(props, dict):
            body["properties"] = {k: v for k, v in props.items() if k == "desired"}
        etag = request.update_twin.get("etag")
        try:
            await self._twins.update(device_id, body, if_match=f'"{etag}"' if etag else None)
        except HubError as exc:
            return device_id, _D.FAILED, started, _stamp(), None, {"code": exc.error_name, "description": exc.message}
        return device_id, _D.COMPLETED, started, _stamp(), None, None
