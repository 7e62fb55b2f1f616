"""The shipped deployments on a real Prefect server: schedules fire, a worker runs them.

One ``prefect server start`` per session (own PREFECT_HOME, free port), the project's
``deployments/prefect.yaml`` deployed with ``prefect deploy --all``, a process worker on
the ``iot-flows`` pool, an ``iot-flows hub serve`` and a tagged ``iot-flows fleet
simulate``: the commands of the README's "Deployments" section, as subprocesses.

Fails with Prefect 3.8.8 on SQLAlchemy 2.1 (its scheduler raises "Can't evaluate bulk
DML statement" and no deployment ever gets an upcoming run).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from iot_flows.client import HubClient
from tests.prefect_server import PREFECT, ROOT, Hub, PrefectServer, Process

pytestmark = pytest.mark.slow

DEPLOYMENTS = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
SCHEDULED = sorted(d["name"] for d in DEPLOYMENTS if any(s.get("active", True) for s in d.get("schedules") or []))
FLEET = 24
SPREAD = ["--spread", "building=43,44", "--spread", "ring=canary:1,wave1:9,wave2:90"]
#: The README's commands this session runs (ports and paths aside); test_readme_... checks they are in the README.
README_COMMANDS = [
    "prefect server start --host 127.0.0.1 --port",
    "export PREFECT_API_URL=",
    "export PREFECT_UI_API_URL=",
    "iot-flows hub serve --mqtt-port",
    "HubConnection(connection_string=os.environ[\"IOT_FLOWS_HUB_CONNECTION_STRING\"], base_url=",
    ".save(\"fleet-hub\", overwrite=True)",
    "iot-flows fleet simulate --count",
    "--spread building=43,44 --spread ring=canary:1,wave1:9,wave2:90",
    "prefect work-pool create iot-flows --type process",
    "prefect deploy --all --prefect-file deployments/prefect.yaml",
    "prefect worker start --pool iot-flows",
    "prefect deployment run 'Run a direct-method job/lock-doors-building-43'",
    "prefect deployment run 'Update firmware/update-firmware' --param version=2.2.0 --param package_uri=",
]
#: Upcoming runs must appear well within this; Prefect 3.9's recent-deployments scheduler runs every 5 s.
SCHEDULE_DEADLINE = 90.0


class Stack:
    """Server, hub, fleet and worker of one session, started in the README's order."""

    server: PrefectServer
    hub: Hub
    fleet: Process
    worker: Process
    figures: dict[str, float]
    deployments: dict[str, dict[str, Any]]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("prefect-server")
    s = Stack()
    s.figures = {}
    started: list[Any] = []
    try:
        s.server = PrefectServer(folder / "home")
        started.append(s.server)
        s.figures["server_healthy_seconds"] = round(s.server.wait_healthy(), 1)
        s.hub = Hub(folder)
        started.append(s.hub)
        # The HubConnection block the deployments name ("fleet-hub"), as the README creates it.
        s.server.python(
            "import os; from iot_flows.blocks import HubConnection; "
            "HubConnection(connection_string=os.environ[\"IOT_FLOWS_HUB_CONNECTION_STRING\"], "
            "base_url=os.environ[\"HUB_URL\"]).save(\"fleet-hub\", overwrite=True)",
            IOT_FLOWS_HUB_CONNECTION_STRING=s.hub.connection_string, HUB_URL=s.hub.base_url,
        )
        s.fleet = s.hub.fleet(folder, FLEET, *SPREAD)
        started.append(s.fleet)
        s.server.cli("work-pool", "create", "iot-flows", "--type", "process")
        t0 = time.monotonic()
        s.server.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        s.figures["deploy_seconds"] = round(time.monotonic() - t0, 1)
        s.deployments = {d["name"]: d for d in s.server.post("/deployments/filter", {"limit": 200})}
        s.worker = Process([PREFECT, "worker", "start", "--pool", "iot-flows"],
                           {**s.server.env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, folder / "worker.log")  # fmt: skip
        started.append(s.worker)
        yield s
    finally:
        for part in reversed(started):
            part.stop()


def _scheduled_runs(server: PrefectServer, deployment_ids: list[str]) -> dict[str, int]:
    runs = server.post("/flow_runs/filter", {
        "flow_runs": {"deployment_id": {"any_": deployment_ids}, "state": {"type": {"any_": ["SCHEDULED"]}}},
        "limit": 200,
    })  # fmt: skip
    counts = dict.fromkeys(deployment_ids, 0)
    for run in runs:
        counts[run["deployment_id"]] += 1
    return counts


def test_every_deployment_is_created(stack: Stack) -> None:
    assert sorted(stack.deployments) == sorted(d["name"] for d in DEPLOYMENTS)


def test_every_active_schedule_gets_upcoming_runs(stack: Stack) -> None:
    active = {name: d for name, d in stack.deployments.items() if any(s["active"] for s in d["schedules"])}
    assert sorted(active) == SCHEDULED and len(SCHEDULED) >= 5
    ids = {d["id"]: name for name, d in active.items()}
    t0 = time.monotonic()
    while True:
        counts = _scheduled_runs(stack.server, list(ids))
        if all(counts.values()) or time.monotonic() - t0 > SCHEDULE_DEADLINE:
            break
        time.sleep(1)
    stack.figures["upcoming_runs_seconds"] = round(time.monotonic() - t0, 1)
    missing = sorted(ids[i] for i, n in counts.items() if not n)
    server_log = stack.server.process.text()
    assert not missing, f"no upcoming runs after {SCHEDULE_DEADLINE:.0f} s for {missing}:\n{stack.server.process.tail()}"
    assert "Can't evaluate bulk DML" not in server_log
    # Figure: from a deployment's creation to its first scheduled run (server clock on both).
    runs = stack.server.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": list(ids)}}, "limit": 200})
    first: dict[str, datetime] = {}
    for r in runs:
        created = datetime.fromisoformat(r["created"])
        first[r["deployment_id"]] = min(first.get(r["deployment_id"], created), created)
    lags = [(first[i] - datetime.fromisoformat(active[name]["created"])).total_seconds() for i, name in ids.items()]
    stack.figures["deployment_to_first_scheduled_run_max_seconds"] = round(max(lags), 1)
    print(f"\nfigures: {stack.figures}, upcoming runs per deployment: { {ids[i]: n for i, n in counts.items()} }")


def _start(stack: Stack, name: str, *params: str) -> str:
    """``prefect deployment run FLOW/NAME [--param k=v ...]``; returns the flow run id."""
    flow_name = stack.server.get(f"/flows/{stack.deployments[name]['flow_id']}")["name"]
    args = ["deployment", "run", f"{flow_name}/{name}"]
    for param in params:
        args += ["--param", param]
    out = stack.server.cli(*args).stdout
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert flow_run_id, out
    return flow_run_id.group(1)


def _run(stack: Stack, name: str, *params: str, timeout: float = 180) -> dict[str, Any]:
    """``prefect deployment run FLOW/NAME [--param k=v ...]`` and wait for the run's final state."""
    run = stack.server.wait_flow_run(_start(stack, name, *params), timeout)
    assert run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), (
        f"{name} still {run['state']['type']} after {timeout:.0f} s:\n{stack.worker.tail()}"
    )
    return run


def test_a_worker_runs_a_shipped_deployment_to_completed_on_real_devices(stack: Stack) -> None:
    t0 = time.monotonic()
    run = _run(stack, "lock-doors-building-43")
    stack.figures["lock_doors_run_seconds"] = round(time.monotonic() - t0, 1)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.worker.tail()}"
    # Real work: the hub ran lockDoor on building 43 (half the fleet), every device answered.
    async def jobs() -> list[dict[str, Any]]:
        async with HubClient(stack.hub.connection_string, base_url=stack.hub.base_url) as client:
            return await client.query_jobs(job_type="scheduleDeviceMethod")

    (job,) = [j for j in asyncio.run(jobs()) if j.get("cloudToDeviceMethod", {}).get("methodName") == "lockDoor"]
    stats = job["deviceJobStatistics"]
    assert stats["deviceCount"] == FLEET // 2 and stats["succeededCount"] == FLEET // 2, job
    # What the runs list and the Artifacts page show.
    assert run["name"] == "lockDoor · tags.building = '43'"
    half = FLEET // 2
    assert run["state"]["message"] == f"lockDoor on {half} devices: {half} done: {half} succeeded, 0 failed"
    keys = _artifact_keys(stack, run["id"])
    assert "method-job-lockdoor" in keys, keys
    expected = f"{half} done: {half} succeeded, 0 failed"
    assert expected in _logs(stack, run["id"], expected)


def _artifact_keys(stack: Stack, flow_run_id: str) -> list[str]:
    artifacts = stack.server.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return sorted(a["key"] for a in artifacts if a["key"])


def _logs(stack: Stack, flow_run_id: str, containing: str, timeout: float = 20) -> str:
    """The run's log messages once one contains ``containing`` (logs reach the server in batches,
    after the run's final state; ``timeout`` s at most, then what arrived)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = stack.server.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        text = "\n".join(entry["message"] for entry in logs)
        if containing in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def _firmware(stack: Stack, condition: str) -> dict[str, Any]:
    async def query() -> list[dict[str, Any]]:
        async with HubClient(stack.hub.connection_string, base_url=stack.hub.base_url) as client:
            return await client.query_all(f"SELECT deviceId, properties.reported.firmware.version AS v FROM devices WHERE {condition}")

    return {row["deviceId"]: row.get("v") for row in asyncio.run(query())}


def test_one_param_overrides_one_field_of_a_shipped_deployment(stack: Stack) -> None:
    run = _run(stack, "update-firmware", "version=2.2.0", "package_uri=https://firmware.example.com/fw-2.2.0.bin")
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.worker.tail()}"
    assert run["name"] == "firmware 2.2.0 · tags.ring = 'canary'"
    canary = _firmware(stack, "tags.ring = 'canary'")
    assert len(canary) == 2 and set(canary.values()) == {"2.2.0"}, canary  # one canary per building
    assert "firmware-2-2-0" in _artifact_keys(stack, run["id"])


def test_zero_matching_devices_fails_the_run_with_min_devices(stack: Stack) -> None:
    run = _run(stack, "lock-doors-building-43", "query_condition=tags.building = '99'")
    assert run["state"]["type"] == "FAILED"
    assert "TooFewDevicesError" in run["state"]["message"] and "0 devices matched tags.building = '99'" in run["state"]["message"]
    warning = "0 devices matched tags.building = '99'"
    assert warning in _logs(stack, run["id"], warning)  # the warning
    # min_devices=0: completes, and says so.
    run = _run(stack, "lock-doors-building-43", "query_condition=tags.building = '99'", "min_devices=0")
    assert run["state"]["type"] == "COMPLETED" and run["state"]["message"] == "0 devices matched tags.building = '99'"


def test_bad_input_is_named(stack: Stack) -> None:
    run = _run(stack, "hourly-fleet-report", "connection=no-such-hub")
    assert run["state"]["type"] == "FAILED"
    message = run["state"]["message"]
    assert "no HubConnection block named 'no-such-hub'" in message and ".save('no-such-hub')" in message, message
    flow_name = stack.server.get(f"/flows/{stack.deployments['lock-doors-building-43']['flow_id']}")["name"]
    refused = stack.server.cli("deployment", "run", f"{flow_name}/lock-doors-building-43", "--param",
                               'request={"method_name": "lockDoor", "response_timeout_seconds": 1}', check=False)  # fmt: skip
    if refused.returncode == 0:  # not refused by the deployment's schema: the run itself must fail at once
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", refused.stdout)
        assert flow_run_id, refused.stdout
        run = stack.server.wait_flow_run(flow_run_id.group(1), 120)
        assert run["state"]["type"] == "FAILED" and "response_timeout_seconds" in run["state"]["message"], run["state"]
    else:
        assert "response_timeout_seconds" in refused.stdout + refused.stderr, refused


def test_a_rollout_outside_its_window_frees_the_worker_and_resumes_when_it_opens(stack: Stack) -> None:
    now = datetime.now(UTC)
    opens = (now + timedelta(minutes=2)).replace(second=0, microsecond=0)  # 60-120 s from now
    request = {"package_uri": "https://firmware.example.com/fw-3.0.0.bin", "version": "3.0.0",
               "target_condition": "tags.building = '44'", "waves": [50, 100], "device_timeout_seconds": 60,
               "poll_interval_seconds": 0.5, "retry_backoff_seconds": 0, "hold_worker_max_seconds": 15,
               "maintenance_window": {"start": f"{opens:%H:%M}", "end": f"{opens + timedelta(hours=1):%H:%M}"}}  # fmt: skip
    flow_run_id = _start(stack, "roll-out-firmware", "request=" + json.dumps(request))
    t0 = time.monotonic()
    deadline = t0 + 120
    while time.monotonic() < deadline:
        run = stack.server.get(f"/flow_runs/{flow_run_id}")
        if run["state"]["name"] == "AwaitingWindow" or run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED"):
            break
        time.sleep(0.5)
    assert run["state"]["name"] == "AwaitingWindow", f"{run['state']}\n{stack.worker.tail()}"
    stack.figures["rollout_to_awaiting_window_seconds"] = round(time.monotonic() - t0, 1)
    assert run["state"]["type"] == "SCHEDULED" and run["state"]["message"] == f"wave 1 starts {opens:%H:%M} UTC"
    assert "rollout-3-0-0-window" in _artifact_keys(stack, flow_run_id)
    assert set(_firmware(stack, "tags.building = '44'").values()) != {"3.0.0"}  # nothing started yet
    run = stack.server.wait_flow_run(flow_run_id, 240)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.worker.tail()}"
    assert run["name"] == "firmware 3.0.0 · wave 2/2"
    assert set(_firmware(stack, "tags.building = '44'").values()) == {"3.0.0"}
    assert {"rollout-3-0-0", "rollout-3-0-0-window"} <= set(_artifact_keys(stack, flow_run_id))
    assert run["state"]["message"].startswith(f"firmware 3.0.0 on {FLEET // 2} devices: {FLEET // 2} done: {FLEET // 2} succeeded, 0 failed")


def test_the_readme_says_what_this_session_ran(stack: Stack) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Deployments"):readme.index("### Events and automations")]
    for command in README_COMMANDS:
        assert command in section, command
    # "see it in the UI": the server serves the UI next to the API.
    assert "<html" in stack.server.http.get(stack.server.api_url.removesuffix("/api") + "/").text.lower()
    print(f"\nfigures: {stack.figures}")


def test_stopping_cancels_a_running_forwarding_run_and_pauses_every_schedule(stack: Stack) -> None:
    """The README's "Stopping" commands: the hourly forward-hub-events run outlives a stopped
    worker unless cancelled; pausing the schedules keeps the server from starting more."""
    flow_run_id = _start(stack, "forward-hub-events")
    deadline = time.monotonic() + 120
    while (run := stack.server.get(f"/flow_runs/{flow_run_id}"))["state"]["type"] != "RUNNING":
        assert time.monotonic() < deadline, f"{run['state']}\n{stack.worker.tail()}"
        time.sleep(0.5)
    t0 = time.monotonic()
    stack.server.cli("flow-run", "cancel", flow_run_id)
    run = stack.server.wait_flow_run(flow_run_id, 90)
    assert run["state"]["type"] == "CANCELLED", f"{run['state']}\n{stack.worker.tail()}"
    stack.figures["cancel_forwarding_run_seconds"] = round(time.monotonic() - t0, 1)
    stack.server.cli("--no-prompt", "deployment", "schedule", "pause", "--all")
    deployments = stack.server.post("/deployments/filter", {"limit": 200})
    assert [d["name"] for d in deployments if any(s["active"] for s in d["schedules"])] == []
