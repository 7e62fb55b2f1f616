"""One poll round of a wave as one task: read only what changed since the last round.

At 10,000 devices reading every ``devices.jobs`` record and every twin each round is what
timed the hub's queries out. A round instead:

* reads each running job's ``deviceJobStatistics`` (``GET /jobs/v2/{id}``, one small
  document) and queries its finished records only when those counts moved, and then only
  the records updated since the job's watermark (``devices.jobs.lastUpdatedDateTimeUtc``
  minus a slack, second precision), in pages of :data:`PAGE_SIZE`. When fewer finished
  records have been seen than the statistics count, the watermark is dropped and the
  next round reads the job's finished records in full (nothing is ever missed);
* reads the twins of the devices still waiting for a verdict with a query that returns
  only the decided ones (the mechanism's outcome condition over the waiting ids), not a
  GET per waiting device.

docs/iothub-reference.md §3.6 (``devices.jobs`` queries), docs/iothub-reference.md §3.5 (``deviceJobStatistics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from iot_flows.blocks import HubConnection
from iot_flows.client import MAX_QUERY_LENGTH, device_id_conditions, quote_string
from iot_flows.tasks import RETRY

__all__ = ["PAGE_SIZE", "JobMark", "RoundRead", "read_round"]

#: Items per query page (Azure caps at 100; the bundled hub accepts up to 1,000).
PAGE_SIZE = 1000
#: Records updated this long before the newest one seen are read again (commit lag).
WATERMARK_SLACK_SECONDS = 10.0
_FINISHED = "(devices.jobs.status = 'completed' OR devices.jobs.status = 'failed' OR devices.jobs.status = 'canceled')"
_TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class JobMark:
    """What the runner has read of one job: the last statistics, the watermark, records seen."""

    stats: tuple[int, ...] = ()
    watermark: str | None = None  # YYYY-MM-DDTHH:MM:SS; None = read every finished record
    seen: set[str] = field(default_factory=set)  # devices whose finished record was read
    terminal: bool = False
    device_count: int = 0


@dataclass
class RoundRead:
    """A round's news: finished records per job (new ones), twins of decided devices."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    twins: dict[str, Any] = field(default_factory=dict)
    requests: int = 0


def _mark_from(records: list[dict[str, Any]], previous: str | None) -> str | None:
    stamps = [str(r.get("lastUpdatedDateTimeUtc") or "") for r in records]
    newest = max((s for s in stamps if s), default="")
    if not newest:
        return previous
    try:
        when = datetime.fromisoformat(newest.replace("Z", "+00:00")) - timedelta(seconds=WATERMARK_SLACK_SECONDS)
    except ValueError:
        return None  # an unexpected format: read in full
    mark = when.strftime("%Y-%m-%dT%H:%M:%S")
    return max(mark, previous) if previous else mark


async def _read_job(hub: Any, job_id: str, old: JobMark, out: RoundRead) -> JobMark:
    mark = JobMark(old.stats, old.watermark, set(old.seen), old.terminal, old.device_count)
    job = await hub.get_job(job_id)
    out.requests += 1
    stats = job.get("deviceJobStatistics") or {}
    finished = int(stats.get("succeededCount", 0)) + int(stats.get("failedCount", 0)) + int(stats.get("canceledCount", 0))
    key = (finished, int(stats.get("deviceCount", 0)))
    terminal = job.get("status") in _TERMINAL
    if key == mark.stats and len(mark.seen) >= finished and not terminal:
        return mark
    where = f"devices.jobs.jobId = {quote_string(job_id)} AND {_FINISHED}"
    if mark.watermark:
        where += f" AND devices.jobs.lastUpdatedDateTimeUtc >= {quote_string(mark.watermark)}"
    records: list[dict[str, Any]] = []
    continuation: str | None = None
    while True:
        page = await hub.query_page(f"SELECT * FROM devices.jobs WHERE {where}", continuation=continuation,
                                    page_size=PAGE_SIZE)  # fmt: skip
        out.requests += 1
        records.extend(page.items)
        continuation = page.continuation
        if not continuation:
            break
    new = [r for r in records if r.get("deviceId") not in mark.seen]
    mark.seen.update(str(r.get("deviceId")) for r in records)
    mark.stats = key
    mark.device_count = key[1]
    # Missed some (a record committed after a newer one was read): read in full next round.
    mark.watermark = _mark_from(records, mark.watermark) if len(mark.seen) >= finished else None
    if len(mark.seen) < finished:
        mark.stats = ()
    mark.terminal = terminal and len(mark.seen) >= key[1]
    out.records[job_id] = new
    return mark


@task(name="read_rollout_round", cache_policy=NO_CACHE, **RETRY)
async def read_round(
    connection: HubConnection,
    marks: dict[str, JobMark],
    waiting: list[str],
    outcome_condition: str | None,
) -> tuple[RoundRead, dict[str, JobMark]]:
    """Read one poll round's changes (module docstring) in one task run.

    ``marks``: the running jobs' :class:`JobMark` (updated copies are returned with the
    news); ``waiting``: devices accepted but without a verdict; ``outcome_condition``: a
    WHERE body true for decided twins (None: read every waiting twin, for step timeouts).

    Returns:
        ``(RoundRead, marks)``; ``RoundRead.twins`` maps device id to its twin.
    """
    out = RoundRead()
    marks = dict(marks)  # a retried attempt starts from the same marks
    async with connection.get_client() as hub:
        for job_id, mark in list(marks.items()):
            if not mark.terminal:
                marks[job_id] = await _read_job(hub, job_id, mark, out)
        room = MAX_QUERY_LENGTH - len("SELECT * FROM devices WHERE () AND ()") - len(outcome_condition or "") - 16
        for _, cond in device_id_conditions(waiting, max_length=room):
            where = f"({cond}) AND ({outcome_condition})" if outcome_condition else cond
            continuation: str | None = None
            while True:
                page = await hub.query_page(f"SELECT * FROM devices WHERE {where}", continuation=continuation,
                                            page_size=PAGE_SIZE)  # fmt: skip
                out.requests += 1
                for twin in page.items:
                    out.twins[str(twin.get("deviceId"))] = twin
                continuation = page.continuation
                if not continuation:
                    break
    return out, marks
