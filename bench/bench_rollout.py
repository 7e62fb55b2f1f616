"""Staged rollout over N simulated devices with injected download failures (JSON output).

    .venv/bin/python -m bench.bench_rollout --count 1000 --download-failure-rate 0.05
    .venv/bin/python -m bench.bench_rollout --count 10000 --separate-hub

Runs an embedded hub, a simulated fleet and ``roll_out_firmware`` under Prefect's test
harness; reports wall time, Prefect task runs, retries and the per-wave table.

Measured (2 shared cores, other jobs running; the bench process got 32 % of a core):
10,000 devices, 5 % download failures, ``--separate-hub``: fleet connect 152 s, rollout
381 s, all 10,000 updated, 497 devices retried (every one healed), 54 Prefect task runs.
Per poll round the wave runner reads job statistics, then only new finished
``devices.jobs`` records and only twins that reached an outcome (``rollout/_poll.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time


async def _run(cs: str, mqtt_port: int, base_url: str, count: int, rate: float, waves: list[float]) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    from iot_flows.blocks import HubConnection
    from iot_flows.device import BehaviourConfig, Fleet
    from iot_flows.flows.rollout import RolloutRequest, roll_out_firmware

    behaviour = BehaviourConfig(fw_wait_seconds=0.2, fw_download_seconds=1.0, fw_apply_seconds=1.0, jitter=0.3,
                                download_failure_rate=rate)  # fmt: skip
    fleet = Fleet(cs, count=count, prefix="bench", mqtt_host="127.0.0.1", mqtt_port=mqtt_port,
                  http_url=base_url, tls=False, behaviour=behaviour, seed=11)  # fmt: skip
    t0 = time.monotonic()
    await fleet.start(timeout=600)
    connect_s = time.monotonic() - t0
    try:
        conn = HubConnection(connection_string=cs, base_url=base_url)
        request = RolloutRequest(package_uri="https://firmware.example.com/fw-2.0.0.bin", version="2.0.0", waves=waves,
                                 retries=3, retry_backoff_seconds=2, device_timeout_seconds=120, poll_interval_seconds=1,
                                 min_success_ratio=0.95)  # fmt: skip
        t1 = time.monotonic()
        state = await roll_out_firmware(request, conn, return_state=True)
        wall = time.monotonic() - t1
        result = await state.result()
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                                               task_run_filter=TaskRunFilter(), limit=200)  # fmt: skip
            task_runs = len(runs) if len(runs) < 200 else await client.count_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        waves_table = [{"wave": f"{w.index + 1}/{len(result.waves)}", "devices": w.devices, "updated": w.updated,
                        "failed": len(w.failed), "rejected": len(w.rejected), "timed_out": len(w.timed_out),
                        "attempts": w.attempts, "retried": w.retried, "task_runs": w.task_runs, "seconds": w.seconds}
                       for w in result.waves]  # fmt: skip
        return {
            "benchmark": "rollout",
            "devices": count,
            "download_failure_rate": rate,
            "connect_seconds": round(connect_s, 1),
            "rollout_wall_seconds": round(wall, 1),
            "status": result.status,
            "updated": sum(w.updated for w in result.waves),
            "retried_devices": sum(w.retried for w in result.waves),
            "prefect_task_runs": task_runs,
            "fleet_download_failures": fleet.counters["fw_download_failed"],
            "waves": waves_table,
        }
    finally:
        await fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--download-failure-rate", type=float, default=0.05)
    parser.add_argument("--waves", default="1,10,50,100")
    parser.add_argument("--separate-hub", action="store_true", help="run the hub in its own process (10,000 devices: fds)")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    from iot_flows.hub import HubSettings
    from iot_flows.hub._embedded import EmbeddedHub

    waves = [float(w) for w in args.waves.split(",")]
    with prefect_test_harness(server_startup_timeout=120):
        if args.separate_hub:
            from bench._lean import HubProc

            proc = HubProc()
            try:
                out = asyncio.run(_run(proc.connection_string, proc.mqtt_port, proc.base_url, args.count,
                                       args.download_failure_rate, waves))  # fmt: skip
            finally:
                proc.stop()
        else:
            folder = tempfile.mkdtemp(prefix="bench-rollout-")
            with EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=os.path.join(folder, "hub.db"))) as hub:
                out = asyncio.run(_run(hub.connection_string(), hub.hub.mqtt_port, hub.base_url, args.count,
                                       args.download_failure_rate, waves))  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
