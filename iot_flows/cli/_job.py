"""``iot-flows job create-method|create-twin-update|show|cancel|list`` (``az iot hub job``).

``--wait`` follows the job until it is terminal (completed, failed, cancelled) with a
live progress bar on stderr: devices done of the job's device count, succeeded, failed.
The final job is printed on stdout; with ``--wait`` the exit code is 0 only when the job
completed with no device failed. Reference: "Schedule jobs on multiple devices" (Azure docs).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from iot_flows.cli._ops import (
    CaFileOption,
    DesiredOption,
    HubOption,
    HubUrlOption,
    OutputOption,
    ProfileOption,
    TagsOption,
    emit,
    guard,
    parse_json,
    run_hub_command,
    twin_patch,
)
from iot_flows.jobs import TERMINAL_JOB_STATES

__all__ = ["job_app", "follow"]

job_app = typer.Typer(no_args_is_help=True, help="Jobs over many devices: create-method, create-twin-update, show, cancel, list.")

COLUMNS = ["jobId", "type", "status", "queryCondition", "deviceJobStatistics.deviceCount",
           "deviceJobStatistics.succeededCount", "deviceJobStatistics.failedCount", "createdTime"]  # fmt: skip
#: the table's headers (JSON output keeps IoT Hub's names): the statistics' paths cut to
#: "deviceJo…" three times on a 120-column terminal
HEADERS = {"deviceJobStatistics.deviceCount": "devices", "deviceJobStatistics.succeededCount": "succeeded",
           "deviceJobStatistics.failedCount": "failed", "queryCondition": "query"}  # fmt: skip

JobId = Annotated[str, typer.Argument(help="Job id.", show_default=False)]
NewJobId = Annotated[str | None, typer.Option("--job-id", help="Job id (default: a new one).")]
Condition = Annotated[str, typer.Option("--query-condition", "-q", help="WHERE body selecting devices, e.g. \"tags.building = '43'\".")]
MaxTime = Annotated[int, typer.Option("--max-execution-time", min=1, help="Seconds the job may run.")]
Wait = Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends.")]
StartTime = Annotated[
    datetime | None, typer.Option("--start-time", help="When the job starts (ISO 8601, UTC when no zone); default: now.")
]
Poll = Annotated[float, typer.Option("--poll-interval", min=0.1, help="Seconds between job reads with --wait.")]


def _counts(job: dict[str, Any]) -> tuple[int, int, int, int]:
    stats = job.get("deviceJobStatistics") or {}
    total, ok = int(stats.get("deviceCount") or 0), int(stats.get("succeededCount") or 0)
    failed, canceled = int(stats.get("failedCount") or 0), int(stats.get("canceledCount") or 0)
    return total, ok, failed, canceled


async def follow(client: Any, job_id: str, *, poll_interval: float = 0.5) -> dict[str, Any]:
    """Poll ``job_id`` until it is terminal, drawing a rich progress bar on stderr; the final job."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )  # fmt: skip
    bar = progress.add_task(f"job {job_id}", total=None, detail="")
    with progress:
        while True:
            job = await client.get_job(job_id)
            total, ok, failed, canceled = _counts(job)
            progress.update(
                bar, total=total or None, completed=ok + failed + canceled,
                detail=f"{job['status']}: {ok} succeeded, {failed} failed" + (f", {canceled} canceled" if canceled else ""),
            )  # fmt: skip
            if job["status"] in TERMINAL_JOB_STATES:
                return job  # type: ignore[no-any-return]
            await asyncio.sleep(poll_interval)


def _create(body: dict[str, Any], job_id: str | None, start_time: datetime | None, wait: bool, poll: float,
            output: Any, hub: Any, hub_url: Any, profile: Any, ca_file: Any) -> None:  # fmt: skip
    job_id = job_id or f"cli-{uuid.uuid4().hex[:12]}"
    if start_time is not None:
        start = start_time if start_time.tzinfo else start_time.replace(tzinfo=UTC)
        body["startTime"] = start.astimezone(UTC).isoformat().replace("+00:00", "Z")

    async def go(client: Any) -> dict[str, Any]:
        job = await client.create_job(job_id, body)
        return await follow(client, job_id, poll_interval=poll) if wait else job

    job = _interruptible(job_id, wait, lambda: run_hub_command(hub, hub_url, profile, ca_file, go))
    _finish(job, wait, output)


def _interruptible(job_id: str, wait: bool, command: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``command``; Ctrl-C while following a job says the job goes on, and how to stop it (exit 130)."""
    try:
        return command()
    except KeyboardInterrupt:
        if not wait:
            raise
        typer.echo(f"interrupted: job {job_id} (if created) goes on running on the hub; "
                   f"`iot-flows job show {job_id} --wait` follows it, `iot-flows job cancel {job_id}` stops it",
                   err=True)  # fmt: skip
        raise typer.Exit(130) from None


def _finish(job: dict[str, Any], wait: bool, output: Any) -> None:
    emit(job, output)
    if wait:
        _total, _ok, failed, _canceled = _counts(job)
        if job["status"] != "completed" or failed:
            typer.echo(f"error: job {job['jobId']} {job['status']} ({failed} devices failed)", err=True)
            raise typer.Exit(1)


@job_app.command("create-method")
@guard
def create_method(
    method_name: Annotated[str, typer.Argument(metavar="METHOD", help="Direct method to invoke on each device.")],
    query_condition: Condition = "*",
    payload: Annotated[str | None, typer.Option("--payload", help="JSON payload (default: null).")] = None,
    timeout: Annotated[int, typer.Option("--timeout", min=5, max=300, help="Seconds each device has to answer.")] = 30,
    job_id: NewJobId = None, start_time: StartTime = None, max_execution_time: MaxTime = 3600, wait: Wait = False, poll_interval: Poll = 0.5,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Schedule METHOD on every device the query condition selects (scheduleDeviceMethod)."""
    body = {
        "type": "scheduleDeviceMethod",
        "queryCondition": query_condition,
        "cloudToDeviceMethod": {"methodName": method_name, "payload": parse_json(payload, "--payload"),
                                "responseTimeoutInSeconds": timeout, "connectTimeoutInSeconds": 0},
        "maxExecutionTimeInSeconds": max_execution_time,
    }  # fmt: skip
    _create(body, job_id, start_time, wait, poll_interval, output, hub, hub_url, profile, ca_file)


@job_app.command("create-twin-update")
@guard
def create_twin_update(
    query_condition: Condition = "*",
    desired: DesiredOption = None,
    tags: TagsOption = None,
    job_id: NewJobId = None, start_time: StartTime = None, max_execution_time: MaxTime = 3600, wait: Wait = False, poll_interval: Poll = 0.5,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Merge desired properties and/or tags into every selected twin (scheduleUpdateTwin)."""
    update = {"etag": "*", **twin_patch(desired, tags)}
    body = {"type": "scheduleUpdateTwin", "queryCondition": query_condition, "updateTwin": update,
            "maxExecutionTimeInSeconds": max_execution_time}  # fmt: skip
    _create(body, job_id, start_time, wait, poll_interval, output, hub, hub_url, profile, ca_file)


@job_app.command("show")
def show(
    job_id: JobId, wait: Wait = False, poll_interval: Poll = 0.5,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Show a job and its device statistics (with --wait: once it has ended)."""

    async def go(client: Any) -> dict[str, Any]:
        return await (follow(client, job_id, poll_interval=poll_interval) if wait else client.get_job(job_id))

    _finish(_interruptible(job_id, wait, lambda: run_hub_command(hub, hub_url, profile, ca_file, go)), wait, output)


@job_app.command("cancel")
def cancel(
    job_id: JobId,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Cancel a job: devices not yet reached are not touched."""
    emit(run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.cancel_job(job_id)), output)


@job_app.command("list")
def list_jobs(
    job_type: Annotated[str | None, typer.Option("--job-type", help="scheduleDeviceMethod or scheduleUpdateTwin.")] = None,
    job_status: Annotated[str | None, typer.Option("--job-status", help="e.g. running, completed.")] = None,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """List jobs (GET /jobs/v2/query), newest state of each."""
    jobs = run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.query_jobs(job_type=job_type, job_status=job_status))
    emit(jobs, output, columns=COLUMNS, headers=HEADERS)
