"""The jobs engine: ``/jobs/v2`` fan-out inside the hub with bounded concurrency.

A job selects its devices with a twin query *at the moment it starts* and records one
``devices.jobs`` row per device. Devices move ``pending -> running -> completed|failed``
(or ``canceled``); "running" is committed *before* a request is sent, so after a crash
a device is never run twice: on restart, method requests that were in flight become
``failed`` (outcome unknown), twin updates (idempotent) go back to ``pending``, and the
job resumes. Every job ends in a terminal state: ``maxExecutionTimeInSeconds`` bounds it.

Beyond Azure (documented extensions): a running job can be cancelled (devices not yet
reached become ``canceled``); ``waitForOfflineDevices`` keeps offline devices pending
until they connect, within the job's max execution time; several jobs may run at once
(``max_concurrent_jobs``; Azure S1 allows one, 429004 beyond the limit).

The per-job device fan-out (method calls, twin updates, outcome batches, lease fencing)
lives in :mod:`iot_flows.hub._job_runner`; this module creates, schedules, resumes,
cancels and finishes jobs.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from iot_flows._exceptions import ThrottledError
from iot_flows._settings import JobSettings
from iot_flows._tasks import BackgroundTasks
from iot_flows._types import MethodResult
from iot_flows.hub._job_repository import JobRepository
from iot_flows.hub._job_requests import format_time, parse_job_request, parse_time
from iot_flows.hub._job_runner import JobLease, JobRunner, _LeaseLost, _Run
from iot_flows.hub._methods import MethodCall, MethodInvoker
from iot_flows.hub._sessions import SessionRegistry
from iot_flows.hub._twins import TwinService
from iot_flows.jobs import (
    ACTIVE_JOB_STATES,
    DeviceJobStatus,
    JobStatus,
    JobType,
    check_transition,
    created_status,
)
from iot_flows.store import HubStore

__all__ = ["JobEngine"]

log = logging.getLogger(__name__)
_D = DeviceJobStatus
#: Checks a queryCondition (raises QuerySyntaxError, 400) before anything is stored.
ConditionCompiler = Callable[[str], tuple[str, tuple[Any, ...]]]
#: Called with the job document whenever a job changes state.
JobListener = Callable[[dict[str, Any]], None]


def _now() -> datetime:
    return datetime.now(UTC)


def _never() -> bool:
    return False


class JobEngine(JobRunner):
    """Creates, runs, resumes and cancels jobs."""

    def __init__(
        self,
        store: HubStore,
        twins: TwinService,
        methods: MethodInvoker,
        sessions: SessionRegistry,
        compile_condition: ConditionCompiler,
        settings: JobSettings | None = None,
    ) -> None:
        self._store = store
        self._repo = JobRepository(store)
        self._twins = twins
        self._methods = methods
        self._invoke_method = methods.invoke  # once: a Paced wrapper builds it on each access
        #: ``MethodInvoker.start`` (a call without a task) and whether a --quota paces calls now.
        self._start_method: Callable[[str, MethodCall], asyncio.Future[MethodResult] | None] | None = getattr(
            methods, "start", None
        )
        self._pacing: Callable[[], bool] = getattr(methods, "pacing", _never)
        self._tallies: dict[str, dict[str, int]] = {}
        self._sessions = sessions
        self._compile = compile_condition
        self.settings = settings or JobSettings()
        self._runs: dict[str, _Run] = {}
        self._tasks = BackgroundTasks("job engine")
        self._listeners: list[JobListener] = []
        #: Set by a cluster node: exactly one node runs each job (a lease in the store).
        self.lease: JobLease | None = None
        #: Set by a cluster node: True when another node holds the device's connection.
        self.held_elsewhere: Callable[[str], Awaitable[bool]] | None = None
        #: Set by a cluster node: wait up to N s until the device is reachable on any node.
        self.wait_online: Callable[[str, float], Awaitable[None]] | None = None
        #: Set by a cluster node: invokes a job's method call wherever the device is (batched per node).
        self.invoke_method: Callable[[str, MethodCall], Awaitable[MethodResult]] | None = None

    @property
    def repository(self) -> JobRepository:
        """The job rows in the store (used by queries over ``devices.jobs``)."""
        return self._repo

    def add_listener(self, listener: JobListener) -> None:
        """Call ``listener(job_document)`` on every job state change."""
        self._listeners.append(listener)

    # ---- service API ----------------------------------------------------------------------
    async def create(self, job_id: str, body: Any) -> dict[str, Any]:
        """``PUT /jobs/v2/{id}`` (Azure "Jobs - Create Scheduled Job"): validate, store, start.

        Returns the job document. Raises ``BadRequestError`` / ``QuerySyntaxError`` (400) for a bad
        body or condition, ``ThrottledError`` 429004 beyond ``max_concurrent_jobs``, a conflict for a
        duplicate id.
        """
        now = _now()
        request = parse_job_request(job_id, body, now=now)
        self._compile(request.query_condition)  # 400 with position before anything is stored
        if await self._repo.count_active() >= self.settings.max_concurrent_jobs:
            raise ThrottledError(
                f"The hub allows {self.settings.max_concurrent_jobs} active jobs at once.",
                error_code=429004,
                error_name="ThrottlingMaxActiveJobCountExceeded",
            )
        status = JobStatus.SCHEDULED if request.start_time > now else JobStatus.QUEUED
        doc: dict[str, Any] = {
            "jobId": job_id,
            "type": request.type.value,
            "status": status.value,
            "queryCondition": request.query_condition,
            "createdTime": format_time(now),
            "startTime": format_time(request.start_time),
            "maxExecutionTimeInSeconds": request.max_execution_seconds,
        }
        if request.method is not None:
            doc["cloudToDeviceMethod"] = {
                "methodName": request.method.method_name,
                "payload": request.method.payload,
                "responseTimeoutInSeconds": request.method.response_timeout,
                "connectTimeoutInSeconds": request.method.connect_timeout,
            }
        else:
            doc["updateTwin"] = request.update_twin
        if request.wait_for_offline_devices:
            doc["waitForOfflineDevices"] = True
        if self.lease is not None and await self.lease.acquire(job_id):
            try:  # the node that creates a job runs it
                await self._repo.insert(job_id, request.type.value, status, doc["createdTime"], doc)
            except BaseException:
                if job_id not in self._runs:  # a duplicate id of a job running here keeps its lease
                    await self.lease.release(job_id)
                raise
        else:
            await self._repo.insert(job_id, request.type.value, status, doc["createdTime"], doc)
        self._launch(job_id)
        created = await self.get(job_id)
        created["status"] = created_status(JobStatus(created["status"]))
        return created

    async def get(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/v2/{id}``: the job document with ``deviceJobStatistics``; 404 when unknown."""
        doc = await self._repo.get(job_id)
        doc["deviceJobStatistics"] = self._repo.statistics(await self._counts(job_id))
        return doc

    async def _counts(self, job_id: str) -> dict[str, int]:
        tally = self._tallies.get(job_id)  # a method job fanning out here: its committed counts
        return dict(tally) if tally is not None else await self._repo.counts(job_id)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued, scheduled or running job; devices not reached become ``canceled``."""
        doc = await self._repo.get(job_id)
        check_transition(JobStatus(doc["status"]), JobStatus.CANCELLED)
        now = format_time(_now())
        self._tallies.pop(job_id, None)  # the store's counts from here on
        async with self._store.transaction():
            doc["status"] = JobStatus.CANCELLED.value
            doc["endTime"] = now
            await self._repo.save(doc)
            await self._repo.set_status_where(job_id, (_D.PENDING, _D.SCHEDULED), _D.CANCELED, now)
        run = self._runs.get(job_id)
        if run is not None:
            run.cancelled.set()
        await self._emit(job_id)
        return await self.get(job_id)

    async def list(self, *, job_type: str | None, status: str | None, after: str, limit: int) -> list[dict[str, Any]]:
        """``GET /jobs/v2/query``: up to ``limit`` jobs after ``after`` (job id), filtered by type and status."""
        docs = await self._repo.list(job_type=job_type, status=status, after=after, limit=limit)
        for doc in docs:
            doc["deviceJobStatistics"] = self._repo.statistics(await self._counts(doc["jobId"]))
        return docs

    # ---- lifecycle ----------------------------------------------------------------------------
    async def resume(self) -> None:
        """Re-arm every job that was active when the hub stopped (call once at start)."""
        for doc in await self._repo.active():
            self._launch(doc["jobId"])

    async def stop(self) -> None:
        """Cancel and await every running job here (each stays active and resumes on next start)."""
        await self._tasks.close()

    def interrupt(self, job_id: str) -> None:
        """Stop running ``job_id`` here (another hub node cancelled it)."""
        self._tallies.pop(job_id, None)
        run = self._runs.get(job_id)
        if run is not None:
            run.cancelled.set()

    def _launch(self, job_id: str) -> None:
        if job_id in self._runs:
            return
        run = _Run()
        self._runs[job_id] = run
        run.task = self._tasks.spawn(self._run(job_id, run), name=f"job-{job_id}")

    async def _emit(self, job_id: str) -> None:
        if not self._listeners:
            return
        doc = await self.get(job_id)
        for listener in self._listeners:
            try:
                listener(copy.deepcopy(doc))
            except Exception:
                log.exception("job listener failed")

    # ---- running ----------------------------------------------------------------------------
    async def _run(self, job_id: str, run: _Run) -> None:
        if self.lease is not None and not await self.lease.acquire(job_id):
            self._runs.pop(job_id, None)
            return  # another live node runs it
        try:
            await self._run_inner(job_id, run)
        except asyncio.CancelledError:
            raise  # hub shutdown: the job stays active and resumes on next start
        except _LeaseLost:
            log.warning("job %s: this node's lease lapsed; it stops here (another node may run it)", job_id)
        except Exception as exc:
            log.exception("job %s crashed", job_id)
            await self._finish(job_id, JobStatus.FAILED, f"internal error: {exc!r}")
        finally:
            self._runs.pop(job_id, None)
            if self.lease is not None:
                await self.lease.release(job_id)

    async def _run_inner(self, job_id: str, run: _Run) -> None:
        doc = await self._repo.get(job_id)
        request = parse_job_request(job_id, doc, now=_now())
        delay = (request.start_time - _now()).total_seconds()
        if delay > 0:
            try:
                await asyncio.wait_for(run.cancelled.wait(), delay)
                return  # cancelled while scheduled
            except TimeoutError:
                pass
        doc = await self._repo.get(job_id)
        if JobStatus(doc["status"]) not in ACTIVE_JOB_STATES:
            return
        now = format_time(_now())
        self._fence()
        if doc["status"] != JobStatus.RUNNING.value:
            async with self._store.transaction():
                ids = await self._repo.select_devices(request.query_condition)
                await self._repo.add_devices(job_id, request.type.value, ids, _D.PENDING, now)
                doc["status"] = JobStatus.RUNNING.value
                doc["runStartTime"] = now
                await self._repo.save(doc)
            await self._emit(job_id)
        else:  # resumed after a restart
            async with self._store.transaction():
                if request.type is JobType.SCHEDULE_UPDATE_TWIN:
                    await self._repo.set_status_where(job_id, (_D.RUNNING,), _D.PENDING, now)
                else:
                    await self._repo.set_status_where(
                        job_id, (_D.RUNNING,), _D.FAILED, now,
                        {"code": "HubRestarted", "description": "The hub restarted while the request was in flight; outcome unknown."},
                    )  # fmt: skip
        deadline = parse_time(doc["runStartTime"]).timestamp() + request.max_execution_seconds
        loop = asyncio.get_running_loop()
        deadline_loop = loop.time() + (deadline - _now().timestamp())
        timed_out = await self._fan_out(job_id, request, run, deadline_loop)
        if run.cancelled.is_set():
            return  # cancel() already wrote the terminal state
        if timed_out:
            await self._finish(job_id, JobStatus.FAILED, "maxExecutionTimeInSeconds exceeded")
        else:
            await self._finish(job_id, JobStatus.COMPLETED, None)

    async def _finish(self, job_id: str, status: JobStatus, reason: str | None) -> None:
        doc = await self._repo.get(job_id)
        if JobStatus(doc["status"]) not in ACTIVE_JOB_STATES:
            return
        now = format_time(_now())
        self._fence()
        async with self._store.transaction():
            if status is JobStatus.FAILED:
                await self._repo.set_status_where(
                    job_id, (_D.PENDING, _D.RUNNING, _D.SCHEDULED), _D.FAILED, now,
                    {"code": "JobTimedOut", "description": reason or "job failed"},
                )  # fmt: skip
                doc["failureReason"] = reason
            doc["status"] = status.value
            doc["endTime"] = now
            await self._repo.save(doc)
        await self._emit(job_id)

