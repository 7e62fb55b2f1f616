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
import re
import time
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
            "HubConnection(connection_string=os.environ['IOT_FLOWS_HUB_CONNECTION_STRING'], "
            "base_url=os.environ['HUB_URL']).save('fleet-hub', overwrite=True)",
            IOT_FLOWS_HUB_CONNECTION_STRING=s.hub.connection_string, HUB_URL=s.hub.base_url,
        )
        s.fleet = s.hub.fleet(folder, FLEET, "--spread", "building=43,44", "--spread", "ring=canary:1,wave1:9,wave2:90")
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
    print(f"\nfigures: {stack.figures}, upcoming runs per deployment: { {ids[i]: n for i, n in counts.items()} }")


def _run(stack: Stack, name: str, *params: str, timeout: float = 180) -> dict[str, Any]:
    """``prefect deployment run FLOW/NAME [--param k=v ...]`` and wait for the run's final state."""
    flow_name = stack.server.get(f"/flows/{stack.deployments[name]['flow_id']}")["name"]
    args = ["deployment", "run", f"{flow_name}/{name}"]
    for param in params:
        args += ["--param", param]
    out = stack.server.cli(*args).stdout
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert flow_run_id, out
    run = stack.server.wait_flow_run(flow_run_id.group(1), timeout)
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
