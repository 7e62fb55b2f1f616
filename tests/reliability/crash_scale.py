"""Crash safety at scale (issue 12 item 3): ``kill -9`` of the hub mid-job and mid-burst.

``python -m tests.reliability.crash_scale --devices 10000 --store sqlite|postgresql --nodes 1|2``
(or ``./scripts/soak --crash``) provisions ``--devices`` lean MQTT devices against
``iot-flows hub serve`` in a subprocess (two nodes sharing PostgreSQL and a NATS server
with ``--nodes 2``), then twice kills a hub with SIGKILL:

(a) in the middle of a ``scheduleDeviceMethod`` job over every device (after 30 % of the
    devices were invoked), and
(b) in the middle of a burst of reported-property patches from every device (each device
    writes ``w<n>`` keys one after another and keeps a ledger of the writes the hub
    acknowledged with 204 and their ``$version``).

After each kill the hub is started again on the same ports (with two nodes the other node
carries on) and the devices reconnect, as SDKs do. Then it checks: every acknowledged write
is present (read back through the REST query API), ``PRAGMA integrity_check`` is ``ok``
(SQLite) or ``amcheck`` finds every B-tree index sound and the device count is right
(PostgreSQL), the job reaches a terminal state, its statistics equal the per-device job
records, and no device was invoked twice. Prints one JSON report; exit status 1 on a finding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.reliability._soak_parts import API_VERSION, DEVICE_KEY, HubUnderTest, SoakDevice, Stats

__all__ = ["CrashConfig", "run_crash"]

METHOD = "crashjob"
JOB_ID = "crash-job"


@dataclass
class CrashConfig:
    """One run: fleet size, store, nodes; ``kill_fraction`` of the job invoked before the kill."""

    devices: int = 10_000
    store: str = "sqlite"  #: sqlite or postgresql
    nodes: int = 1
    kill_fraction: float = 0.3
    burst_acks_per_device: float = 2.0  #: kill once this many writes per device were acknowledged
    method_delay: float = 0.05  #: seconds a device takes to answer the job's method
    job_concurrency: int | None = None  #: --job-device-concurrency (default: the hub's)
    job_batch_size: int | None = None  #: --job-batch-size (default: the hub's)
    #: Two nodes: --node-lease-seconds (the hub's default, 10). A node whose event loop is
    #: busier than this with a 10,000-device job misses its own lease and stops its jobs.
    lease_seconds: float = 10.0
    timeout: float = 900.0


class CrashDevice(SoakDevice):
    """Counts method invocations by name; keeps a ledger of acknowledged reported writes."""

    def __init__(self, device_id: str, hostname: str, stats: Stats, method_delay: float) -> None:
        super().__init__(device_id, hostname, stats)
        self.calls: Counter[str] = Counter()
        self.acked: dict[int, int] = {}  #: write number -> acknowledged $version
        self.pending: dict[str, int] = {}  #: $rid -> write number
        self.next_write = 0
        self.answered = asyncio.Event()
        self.method_delay = method_delay

    def _on_publish(self, topic: str, payload: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        if topic.startswith("$iothub/methods/POST/"):
            name, rid = topic.split("/")[3], topic.rsplit("$rid=", 1)[1]
            self.calls[name] += 1
            reply = encode_method_response(rid)
            asyncio.get_running_loop().call_later(self.method_delay, _write_if_open, transport, reply)
        elif topic.startswith("$iothub/twin/res/"):
            status = topic.split("/")[3]
            rid = re.search(r"\$rid=([^&]+)", topic)
            n = self.pending.pop(rid.group(1), None) if rid else None
            if n is not None and status == "204":
                self.acked[n] = int(re.search(r"\$version=(\d+)", topic).group(1))  # type: ignore[union-attr]
            elif n is not None:
                self.stats.errors[f"reported:{status}"] += 1
            self.answered.set()

    def write_next(self) -> bool:
        """Send the next reported write ``{"w<n>": n, "last": n}``; False when offline."""
        if not self.online or self.transport is None:
            return False
        self.next_write += 1
        rid = f"c{self.next_write}"
        self.pending[rid] = self.next_write
        self.answered.clear()
        self.transport.write(encode_reported(rid, self.next_write))
        return True


def encode_method_response(rid: str) -> bytes:
    from iot_flows.mqtt import Publish, encode

    return encode(Publish(topic=f"$iothub/methods/res/200/?$rid={rid}", payload=b'{"ok":true}'))


def encode_reported(rid: str, n: int) -> bytes:
    from iot_flows.mqtt import Publish, encode

    return encode(Publish(topic=f"$iothub/twin/PATCH/properties/reported/?$rid={rid}",
                          payload=json.dumps({f"w{n}": n, "last": n}).encode()))


def _write_if_open(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


@dataclass
class Findings:
    items: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.items.append(what)


class Run:
    def __init__(self, config: CrashConfig, folder: Path, db: str, bus: str | None) -> None:
        self.config, self.folder, self.db, self.bus = config, folder, db, bus
        self.stats = Stats()
        self.hubs: dict[str, HubUnderTest] = {}
        self.findings = Findings()
        self.locals = [f"127.0.0.{i}" for i in range(2, 10)]
        self.devices: list[CrashDevice] = []
        self.home: dict[str, str] = {}  #: device id -> node name it connects to

    # ---- hubs --------------------------------------------------------------------------
    def _args(self, node: str) -> tuple[str, ...]:
        args: tuple[str, ...] = ("--log-level", "WARNING")
        if self.config.job_concurrency:
            args += ("--job-device-concurrency", str(self.config.job_concurrency))
        if self.config.job_batch_size:
            args += ("--job-batch-size", str(self.config.job_batch_size))
        if self.bus:
            args += ("--bus", self.bus, "--node-id", node, "--node-lease-seconds", str(self.config.lease_seconds))
        return args

    def start_hub(self, node: str, ports: tuple[int, int] | None = None) -> HubUnderTest:
        folder = self.folder / node
        folder.mkdir(exist_ok=True)
        hub = HubUnderTest(folder, self._args(node), db=self.db, ports=ports)
        self.hubs[node] = hub
        return hub

    def survivor(self) -> HubUnderTest:
        return self.hubs["b"] if self.config.nodes == 2 else self.hubs["a"]

    def http(self) -> httpx.AsyncClient:
        hub = self.survivor()
        return httpx.AsyncClient(base_url=hub.base_url, timeout=120, headers={"Authorization": hub.cs.token(ttl=3600)})

    async def kill_and_recover(self) -> float:
        """kill -9 node a; restart it (one node) or move its devices to b (two nodes)."""
        a = self.hubs["a"]
        ports = (a.mqtt_port, a.http_port)
        a.kill9()
        t0 = time.monotonic()
        for d in self.devices:
            if self.home[d.device_id] == "a":
                d.drop(clean=False)  # the socket is dead anyway; mark it ours
        if self.config.nodes == 1:
            self.start_hub("a", ports)
        else:
            for d in self.devices:
                if self.home[d.device_id] == "a":
                    self.home[d.device_id] = "b"
        await self.connect_all()
        return time.monotonic() - t0

    # ---- devices -----------------------------------------------------------------------
    async def provision(self) -> None:
        hub = self.survivor()
        nodes = sorted(self.hubs)
        for i in range(self.config.devices):
            d = CrashDevice(f"crash-{i:05d}", hub.cs.host_name, self.stats, self.config.method_delay)
            self.devices.append(d)
            self.home[d.device_id] = nodes[i % len(nodes)]
        async with self.http() as http:
            for i in range(0, len(self.devices), 100):
                body = [{"id": d.device_id, "importMode": "createOrUpdate",
                         "authentication": {"symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY}}}
                        for d in self.devices[i:i + 100]]
                r = await http.post(f"/devices?{API_VERSION}", json=body)
                r.raise_for_status()

    async def connect_all(self, concurrency: int = 200) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, d: CrashDevice) -> None:
            async with sem:
                for attempt in range(20):
                    if d.online:
                        return
                    try:
                        await d.connect(self.hubs[self.home[d.device_id]].mqtt_port, self.locals[i % len(self.locals)])
                        return
                    except (OSError, ConnectionError, asyncio.TimeoutError):
                        await asyncio.sleep(0.25 * (attempt + 1))
                self.findings.items.append(f"{d.device_id} could not reconnect")

        await asyncio.gather(*(one(i, d) for i, d in enumerate(self.devices)))

    # ---- (a) the job -------------------------------------------------------------------
    async def job_phase(self) -> dict[str, Any]:
        n = len(self.devices)
        async with httpx.AsyncClient(base_url=self.hubs["a"].base_url, timeout=120,
                                     headers={"Authorization": self.hubs["a"].cs.token(ttl=3600)}) as http:
            r = await http.put(f"/jobs/v2/{JOB_ID}?{API_VERSION}", json={
                "jobId": JOB_ID, "type": "scheduleDeviceMethod", "queryCondition": "status = 'enabled'",
                "maxExecutionTimeInSeconds": 3600,
                "cloudToDeviceMethod": {"methodName": METHOD, "payload": {}, "responseTimeoutInSeconds": 30,
                                        "connectTimeoutInSeconds": 60}})
            self.findings.check(r.status_code == 200, f"job PUT answered {r.status_code}: {r.text[:200]}")
        deadline = time.monotonic() + self.config.timeout
        while sum(d.calls[METHOD] for d in self.devices) < n * self.config.kill_fraction:
            if time.monotonic() > deadline:
                self.findings.items.append("the job never reached the kill point")
                break
            await asyncio.sleep(0.01)
        invoked_at_kill = sum(d.calls[METHOD] for d in self.devices)
        recover_seconds = await self.kill_and_recover()
        async with self.http() as http:
            job: dict[str, Any] = {}
            while time.monotonic() < deadline:
                r = await http.get(f"/jobs/v2/{JOB_ID}?{API_VERSION}")
                if r.status_code == 200 and (job := r.json())["status"] in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.5)
            records = await self.query(http, f"SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{JOB_ID}'")
        statuses = Counter(rec["status"] for rec in records)
        failures = Counter(str((rec.get("error") or {}).get("code")) for rec in records if rec["status"] == "failed")
        stats = job.get("deviceJobStatistics", {})
        twice = [d.device_id for d in self.devices if d.calls[METHOD] > 1]
        ran = {d.device_id for d in self.devices if d.calls[METHOD] == 1}
        completed_not_invoked = [rec["deviceId"] for rec in records
                                 if rec["status"] == "completed" and rec["deviceId"] not in ran]
        f = self.findings.check
        f(job.get("status") == "completed", f"job not completed after the restart: {job.get('status')}")
        f(len(records) == n, f"{len(records)} device job records, {n} devices")
        f(stats.get("deviceCount") == len(records), f"deviceCount {stats.get('deviceCount')} != {len(records)} records")
        f(stats.get("succeededCount") == statuses["completed"],
          f"succeededCount {stats.get('succeededCount')} != {statuses['completed']} completed records")
        f(stats.get("failedCount") == statuses["failed"],
          f"failedCount {stats.get('failedCount')} != {statuses['failed']} failed records")
        f(stats.get("runningCount") == 0 and stats.get("pendingCount") == 0, f"job left work: {stats}")
        f(not twice, f"{len(twice)} devices invoked twice, e.g. {twice[:5]}")
        f(not completed_not_invoked, f"{len(completed_not_invoked)} completed records of devices never invoked")
        return {"invoked_at_kill": invoked_at_kill, "recover_seconds": round(recover_seconds, 1),
                "job_status": job.get("status"), "statistics": stats, "records_by_status": dict(statuses), "failed_by_code": dict(failures),
                "devices_invoked_once": len(ran), "devices_invoked_twice": len(twice)}

    async def rejoin(self) -> None:
        """Two nodes: start node a again (same ports) and move its devices back to it."""
        if self.config.nodes == 1 or self.hubs["a"].alive():
            return
        a = self.hubs["a"]
        self.start_hub("a", (a.mqtt_port, a.http_port))
        for i, d in enumerate(self.devices):
            if i % 2 == 0:
                d.drop(clean=True)
                self.home[d.device_id] = "a"
        await asyncio.sleep(1)
        await self.connect_all()

    # ---- (b) the burst -----------------------------------------------------------------
    async def burst_phase(self) -> dict[str, Any]:
        await self.rejoin()
        n = len(self.devices)
        stop = False

        async def writer(d: CrashDevice) -> None:
            while not stop:
                if not d.write_next():
                    return
                try:
                    await asyncio.wait_for(d.answered.wait(), 30)
                except asyncio.TimeoutError:
                    return

        tasks = [asyncio.create_task(writer(d)) for d in self.devices]
        deadline = time.monotonic() + self.config.timeout
        while sum(len(d.acked) for d in self.devices) < n * self.config.burst_acks_per_device:
            if time.monotonic() > deadline:
                self.findings.items.append("the burst never reached the kill point")
                break
            await asyncio.sleep(0.01)
        acked_at_kill = sum(len(d.acked) for d in self.devices)
        recover_seconds = await self.kill_and_recover()
        stop = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        acked = {d.device_id: dict(d.acked) for d in self.devices}  # the ledger, final
        async with self.http() as http:
            twins = await self.query(http, "SELECT * FROM devices")
        by_id = {t["deviceId"]: t for t in twins}
        missing: list[str] = []
        stale: list[str] = []
        for device_id, writes in acked.items():
            reported = by_id.get(device_id, {}).get("properties", {}).get("reported", {})
            missing += [f"{device_id}/w{k}" for k, v in writes.items() if reported.get(f"w{k}") != k]
            if writes and reported.get("$version", 0) < max(writes.values()):
                stale.append(device_id)
        checked = sum(len(w) for w in acked.values())
        self.findings.check(not missing, f"{len(missing)} acknowledged writes missing, e.g. {missing[:5]}")
        self.findings.check(not stale, f"{len(stale)} twins older than an acknowledged $version, e.g. {stale[:5]}")
        return {"acknowledged_at_kill": acked_at_kill, "acknowledged_writes_checked": checked,
                "missing": len(missing), "recover_seconds": round(recover_seconds, 1)}

    # ---- reading back ------------------------------------------------------------------
    async def query(self, http: httpx.AsyncClient, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        continuation: str | None = None
        while True:
            headers = {"x-ms-max-item-count": "1000"}
            if continuation:
                headers["x-ms-continuation"] = continuation
            r = await http.post(f"/devices/query?{API_VERSION}", json={"query": text}, headers=headers)
            r.raise_for_status()
            out += r.json()
            continuation = r.headers.get("x-ms-continuation")
            if not continuation:
                return out

    async def consistency(self) -> dict[str, Any]:
        """SQLite: PRAGMA integrity_check; PostgreSQL: amcheck on every B-tree index, counts."""
        if self.config.store == "sqlite":
            with sqlite3.connect(self.db) as conn:
                result = conn.execute("PRAGMA integrity_check").fetchone()[0]
                devices = conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
            self.findings.check(result == "ok", f"PRAGMA integrity_check: {result}")
            self.findings.check(devices == len(self.devices), f"{devices} device rows, {len(self.devices)} devices")
            return {"integrity_check": result, "device_rows": devices}
        import asyncpg

        conn = await asyncpg.connect(self.db)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            # bt_index_check raises on a corrupt index; heapallindexed: every heap row is indexed.
            indexes = await conn.fetchval(
                "SELECT COUNT(bt_index_check(c.oid::regclass, true)) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.amname = 'btree' AND n.nspname = 'public'")
            devices = await conn.fetchval("SELECT COUNT(*) FROM devices")
        except asyncpg.PostgresError as exc:
            self.findings.items.append(f"amcheck: {exc}")
            return {"amcheck": str(exc)}
        finally:
            await conn.close()
        self.findings.check(devices == len(self.devices), f"{devices} device rows, {len(self.devices)} devices")
        self.findings.check(indexes > 0, "amcheck checked no index")
        return {"amcheck_btree_indexes_ok": indexes, "device_rows": devices}


async def _run(run: Run) -> dict[str, Any]:
    t0 = time.monotonic()
    run.start_hub("a")
    if run.config.nodes == 2:
        run.start_hub("b")
    await run.provision()
    await run.connect_all()
    setup = time.monotonic() - t0
    job = await run.job_phase()
    after_job = await run.consistency()
    burst = await run.burst_phase()
    after_burst = await run.consistency()
    for d in run.devices:
        d.drop(clean=True)
    return {"setup_seconds": round(setup, 1), "job_kill": job, "consistency_after_job_kill": after_job,
            "burst_kill": burst, "consistency_after_burst_kill": after_burst}


def run_crash(config: CrashConfig) -> dict[str, Any]:
    """One crash run (both kills) against fresh hub(s); the JSON-ready report."""
    folder = Path(tempfile.mkdtemp(prefix="iot-flows-crash-"))
    with ExitStack() as stack:
        bus = None
        if config.store == "postgresql":
            from tests.pgcluster import PgCluster

            pg = stack.enter_context(PgCluster())
            db = pg.create_database("crash")
        else:
            db = str(folder / "hub.db")
        if config.nodes == 2:
            from tests.cluster.conftest import NatsServer

            nats = NatsServer().start()
            stack.callback(nats.stop)
            bus = nats.url
        run = Run(config, folder, db, bus)
        t0 = time.monotonic()
        try:
            result = asyncio.run(_run(run))
        finally:
            codes = {}
            for name, hub in run.hubs.items():
                codes[name] = hub.stop() if hub.alive() else "killed"
    result = {"devices": config.devices, "store": config.store, "nodes": config.nodes,
              **({"lease_seconds": config.lease_seconds} if config.nodes == 2 else {}), **result,
              "seconds": round(time.monotonic() - t0, 1), "hub_exit_codes": codes,
              "errors": dict(run.stats.errors), "findings": run.findings.items, "ok": not run.findings.items}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--job-batch-size", type=int, default=None, help="the hub's --job-batch-size")
    parser.add_argument("--job-device-concurrency", type=int, default=None, help="the hub's --job-device-concurrency")
    parser.add_argument("--lease-seconds", type=float, default=10.0,
                        help="two nodes: the hubs' --node-lease-seconds (default 10, the hub's default)")
    parser.add_argument("--report", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    result = run_crash(CrashConfig(devices=args.devices, store=args.store, nodes=args.nodes,
                                   job_batch_size=args.job_batch_size, job_concurrency=args.job_device_concurrency,
                                   lease_seconds=args.lease_seconds))
    text = json.dumps(result, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
