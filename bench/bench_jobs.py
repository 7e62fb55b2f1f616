"""Method job over N connected devices: one PUT /jobs/v2, fan-out inside the hub.

    .venv/bin/python -m bench.bench_jobs --count 1000
    .venv/bin/python -m bench.bench_jobs --count 10000
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from bench._lean import HubProc, connect_fleet, emit, rss_kb


async def main(count: int) -> None:
    hub = HubProc()
    try:
        ids = [f"job-bench-{i:05d}" for i in range(count)]
        keys = hub.provision(ids)
        devices, connect_s = await connect_fleet(hub, keys)
        async with httpx.AsyncClient(base_url=hub.base_url, timeout=60) as http:
            start = time.perf_counter()
            r = await http.put("/jobs/v2/bench-job?api-version=2021-04-12", headers=hub.headers(), json={
                "type": "scheduleDeviceMethod", "queryCondition": "*",
                "cloudToDeviceMethod": {"methodName": "lockDoor", "payload": {}, "responseTimeoutInSeconds": 30}})
            r.raise_for_status()
            while True:
                job = (await http.get("/jobs/v2/bench-job?api-version=2021-04-12", headers=hub.headers())).json()
                if job["status"] in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
        calls = sum(d.calls for d in devices)
        emit({
            "benchmark": "method_job",
            "devices": count,
            "connect_seconds": round(connect_s, 2),
            "job_status": job["status"],
            "statistics": job["deviceJobStatistics"],
            "device_calls_seen": calls,
            "job_seconds": round(elapsed, 3),
            "devices_per_second": round(count / elapsed, 1),
            "hub_rss_mb": round(rss_kb(hub.proc.pid) / 1024, 1),
        })
        for dev in devices:
            dev.transport.close()  # type: ignore[union-attr]
    finally:
        hub.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    asyncio.run(main(parser.parse_args().count))
