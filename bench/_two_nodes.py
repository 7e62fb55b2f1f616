"""The two-node run of ``./scripts/bench`` (``--nodes 2``): two hub nodes on one store and one NATS.

Node a and node b (``hub serve --bus ... --node-id a|b``) share one database (one SQLite
file, or one PostgreSQL database) and one ``nats-server``; half of the N devices connect
to each node, each half from its own lean fleet process (``bench._fleet_proc``), both
at once. Figures, each compared with one node on the same store at the same N (and the
job with Mosquitto) by ``compare``:

* connects/s of both fleets together and each node's memory per connected device;
* the ``scheduleDeviceMethod`` job over all N devices, created on node a (half of the
  calls go to node b over NATS), ``--rounds`` times: devices/s and both nodes' CPU per device;
* the unloaded REST direct method through node a to a device on node a (same node) and
  on node b (cross node, NATS request/reply), alternating in chunks: p50 / p99;
* every device's durable reported PATCH (204 after commit), both halves at once;
* each process's peak RSS (both nodes, both fleets, nats-server).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._measure import median_round, method_job, rest_latencies, summary
from bench._procs import FleetProc, Hub, cpu_seconds, proc_status
from bench._topology import Nats

NODE_IDS = ("a", "b")
PREFIXES = ("bencha", "benchb")  # node a's devices are bencha-00000..., node b's benchb-00000...


def _parallel(*calls: Any) -> list[Any]:
    """Run the zero-argument ``calls`` at once (subprocess I/O releases the GIL); their results."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def two_node_run(tmp: Path, n: int, db: str, args: argparse.Namespace) -> dict[str, Any]:
    """Two nodes on ``db`` (a SQLite path or PostgreSQL URL) with ``n`` devices split over them."""
    halves = ((n + 1) // 2, n // 2)
    if halves[1] < 1:
        raise SystemExit("bench: two nodes need at least 2 devices")
    env = {"IOT_FLOWS_HUB_LOOP": args.hub_loop} if args.hub_loop else None
    nats = Nats()
    nodes: list[Hub] = []
    fleets: list[FleetProc] = []
    try:
        for node_id in NODE_IDS:
            nodes.append(Hub(tmp, env=env, src=args.hub_src, db=db, extra=["--bus", nats.url, "--node-id", node_id],
                             owner_key=nodes[0].owner_key if nodes else None))
        a, b = nodes
        for count, prefix in zip(halves, PREFIXES, strict=True):
            a.provision(count, prefix=prefix)
        time.sleep(0.5)
        pids = [node.proc.pid for node in nodes]
        rss0, cpu0 = [proc_status(p)["VmRSS"] for p in pids], [cpu_seconds(p) for p in pids]
        fleets.extend(_parallel(*(
            (lambda node=node, count=count, prefix=prefix: FleetProc(
                "hub", node.device_port, count, prefix=prefix, loop=args.fleet_loop))
            for node, count, prefix in zip(nodes, halves, PREFIXES, strict=True))))
        failed = sum(f.ready["failed"] for f in fleets)
        if failed:
            raise RuntimeError(f"{failed} of {n} devices failed to connect to two nodes")
        connect_seconds = max(f.ready["connect_seconds"] for f in fleets)
        time.sleep(1.0)
        out: dict[str, Any] = {
            "devices_per_node": dict(zip(NODE_IDS, halves, strict=True)),
            "connect_seconds": round(connect_seconds, 3),
            "connects_per_second": round(n / connect_seconds, 1),
            "connect_hub_cpu_ms_per_device": round((sum(cpu_seconds(p) for p in pids) - sum(cpu0)) * 1000 / n, 3),
            "hub_kb_per_device": {nid: round((proc_status(p)["VmRSS"] - r0) / count, 2)
                                  for nid, p, r0, count in zip(NODE_IDS, pids, rss0, halves, strict=True)},
        }
        out["rest_method_same_node_ms"], out["rest_method_cross_node_ms"] = _same_and_cross(a, args.calls)
        jobs = []
        for r in range(args.rounds):
            f0, h0 = [f.command("stats") for f in fleets], sum(cpu_seconds(p) for p in pids)
            job = method_job(a, n, f"bench2-job-{n}-{r}")
            f1, h1 = [f.command("stats") for f in fleets], sum(cpu_seconds(p) for p in pids)
            calls = sum(y["calls"] - x["calls"] for x, y in zip(f0, f1, strict=True))
            fleet_cpu = sum(y["cpu_seconds"] - x["cpu_seconds"] for x, y in zip(f0, f1, strict=True))
            job["fleet_cpu_us_per_round_trip"] = round(fleet_cpu * 1e6 / max(1, calls), 1)
            job["hub_cpu_us_per_device"] = round((h1 - h0) * 1e6 / n, 1)
            jobs.append(job)
        out["method_job"] = median_round(jobs, "devices_per_second")
        h0 = sum(cpu_seconds(p) for p in pids)
        patches = _parallel(*(lambda f=f: f.command("patch") for f in fleets))
        count = sum(p["patches"] for p in patches)
        out["reported_patch_per_second"] = round(count / max(p["patch_seconds"] for p in patches), 1)
        out["reported_patch_hub_cpu_us"] = round((sum(cpu_seconds(p) for p in pids) - h0) * 1e6 / count, 1)
        out["peak_rss_mb"] = {
            **{f"hub_{nid}": _mb(proc_status(p)["VmHWM"]) for nid, p in zip(NODE_IDS, pids, strict=True)},
            **{f"fleet_{nid}": _mb(f.command("stats")["VmHWM"]) for nid, f in zip(NODE_IDS, fleets, strict=True)},
            "nats": _mb(proc_status(nats.proc.pid)["VmHWM"]),
        }
        return out
    finally:
        for fleet in fleets:
            fleet.stop()
        for node in nodes:
            node.stop()
        nats.stop()


def _same_and_cross(a: Hub, calls: int) -> tuple[dict[str, float], dict[str, float]]:
    """Direct methods through node a to a device on node a and one on node b, alternating in
    chunks (both see the same machine); latency summaries in ms."""
    same: list[float] = []
    cross: list[float] = []
    chunk = max(1, calls // 5)
    while len(same) < calls:
        k = min(chunk, calls - len(same))
        same += rest_latencies(a, f"{PREFIXES[0]}-00000", k, False)
        cross += rest_latencies(a, f"{PREFIXES[1]}-00000", k, False)
    return summary(same), summary(cross)


def _ratio(x: Any, y: Any) -> float | None:
    return round(x / y, 3) if isinstance(x, int | float) and isinstance(y, int | float) and y else None


def compare(two: dict[str, Any], one: dict[str, Any] | None, mosquitto: dict[str, Any] | None) -> dict[str, Any]:
    """Two nodes against their baselines of the same run: one node on the same store and
    size (``one``: its figures from ``bench.run``) and Mosquitto (``mosquitto``)."""
    one, mosquitto = one or {}, mosquitto or {}
    kb = two["hub_kb_per_device"]
    same, cross = two["rest_method_same_node_ms"]["p50"], two["rest_method_cross_node_ms"]["p50"]
    return {
        "job_two_over_one_node": _ratio(two["method_job"]["devices_per_second"],
                                        one.get("method_job", {}).get("devices_per_second")),
        "job_two_nodes_over_mosquitto": _ratio(two["method_job"]["devices_per_second"],
                                               mosquitto.get("round_trips", {}).get("per_second")),
        "reported_patch_two_over_one_node": _ratio(two["reported_patch_per_second"], one.get("reported_patch_per_second")),
        "connects_two_over_one_node": _ratio(two["connects_per_second"], one.get("connects_per_second")),
        "kb_per_device_two_over_one_node": _ratio(sum(kb.values()) / len(kb), one.get("hub_kb_per_device")),
        "method_p50_cross_over_same_node": _ratio(cross, same),
        "method_p50_same_node_two_over_one_node": _ratio(same, one.get("rest_method_ms", {}).get("p50")),
    }
