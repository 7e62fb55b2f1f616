"""Hub core figures: connect time for N devices, REST direct-method round trip, memory per device.

    .venv/bin/python bench/bench_hub.py --count 1000

Runs the hub as a subprocess (``iot-flows hub serve``) and lean MQTT devices in this
process; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

import httpx

from bench._lean import HubProc, connect_fleet, emit, rss_kb


async def main(count: int, calls: int) -> None:
    hub = HubProc()
    try:
        ids = [f"bench-{i:05d}" for i in range(count)]
        keys = hub.provision(ids)
        rss_before = rss_kb(hub.proc.pid)
        devices, connect_s = await connect_fleet(hub, keys)
        await asyncio.sleep(1)
        rss_after = rss_kb(hub.proc.pid)
        latencies = []
        nodelay = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        async with httpx.AsyncClient(base_url=hub.base_url, timeout=30, transport=nodelay) as http:
            for i in range(calls):
                device_id = ids[i % count]
                start = time.perf_counter()
                r = await http.post(f"/twins/{device_id}/methods?api-version=2021-04-12", headers=hub.headers(),
                                    json={"methodName": "ping", "payload": {"i": i}, "responseTimeoutInSeconds": 10})
                latencies.append((time.perf_counter() - start) * 1000)
                assert r.status_code == 200 and r.json()["status"] == 200, r.text
        latencies.sort()
        emit({
            "benchmark": "hub_core",
            "devices": count,
            "connect_seconds": round(connect_s, 3),
            "connects_per_second": round(count / connect_s, 1),
            "hub_rss_mb_before_connect": round(rss_before / 1024, 1),
            "hub_rss_mb_after_connect": round(rss_after / 1024, 1),
            "hub_kb_per_connected_device": round((rss_after - rss_before) / count, 2),
            "rest_method_calls": calls,
            "rest_method_rtt_ms_p50": round(statistics.median(latencies), 3),
            "rest_method_rtt_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 3),
        })
        for dev in devices:
            dev.transport.close()  # type: ignore[union-attr]
    finally:
        hub.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.calls))
