"""What the bench measures on any hub topology: latency summaries, the unloaded REST direct
method (lean HTTP/1.1 client or httpx), a ``scheduleDeviceMethod`` job over the whole fleet.

Shared by the one-node run (``bench.run``) and the two-node run (``bench._two_nodes``).
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import Any

import httpx

from bench._http_driver import latencies as http_latencies
from bench._procs import Hub

JOB_POLL_SECONDS = 0.02


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 3), "p99": pct(values, 0.99), "n": len(values)}


def rest_latencies(hub: Hub, device_id: str, calls: int, new_connection: bool) -> list[float]:
    """Unloaded ``POST /twins/{id}/methods`` latencies (ms) with a lean HTTP/1.1 client
    (``bench._http_driver``, like the lean MQTT client of the baseline); over TLS, httpx."""
    if hub.tls is not None:
        return httpx_latencies(hub, device_id, calls, new_connection)
    body = {"methodName": "ping", "payload": {"i": 1}, "responseTimeoutInSeconds": 10}
    return http_latencies(hub.http_port, "POST", f"/twins/{device_id}/methods?api-version=2021-04-12", body,
                          hub.headers(), calls, new_connection)


def httpx_latencies(hub: Hub, device_id: str, calls: int, new_connection: bool) -> list[float]:
    """The same calls through httpx (a full-featured client, as the SDKs are): its own cost included."""
    body = {"methodName": "ping", "payload": {"i": 1}, "responseTimeoutInSeconds": 10}
    url = f"/twins/{device_id}/methods?api-version=2021-04-12"
    headers = hub.headers()
    out = []
    # no keep-alive: every call opens (and closes) its own TCP connection
    limits = httpx.Limits(max_keepalive_connections=0) if new_connection else httpx.Limits()
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], verify=hub.verify,
                                    limits=limits)
    with httpx.Client(base_url=hub.base_url, timeout=30, transport=transport) as http:
        for _ in range(calls):
            t0 = time.perf_counter()
            r = http.post(url, json=body, headers=headers)
            out.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200 or r.json().get("status") != 200:
                raise RuntimeError(f"direct method failed: {r.status_code} {r.text}")
    return out


def method_job(hub: Hub, count: int, job_id: str) -> dict[str, Any]:
    headers = hub.headers()
    with httpx.Client(base_url=hub.base_url, timeout=120, verify=hub.verify) as http:
        t0 = time.perf_counter()
        http.put(f"/jobs/v2/{job_id}?api-version=2021-04-12", headers=headers, json={
            "type": "scheduleDeviceMethod", "queryCondition": "*",
            "cloudToDeviceMethod": {"methodName": "lockDoor", "payload": {}, "responseTimeoutInSeconds": 30},
        }).raise_for_status()
        while True:
            job = http.get(f"/jobs/v2/{job_id}?api-version=2021-04-12", headers=headers).json()
            if job["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(JOB_POLL_SECONDS)
        seconds = time.perf_counter() - t0
    stats = job.get("deviceJobStatistics", {})
    if job["status"] != "completed" or stats.get("succeededCount") != count:
        raise RuntimeError(f"job {job_id} ended {job['status']} with {stats}")
    return {"seconds": round(seconds, 3), "devices_per_second": round(count / seconds, 1), "statistics": stats}


def median_round(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round with the median ``key`` (its figures), plus every round's ``key``."""
    ordered = sorted(rounds, key=lambda r: r[key])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": [r[key] for r in rounds]}
