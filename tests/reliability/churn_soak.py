"""Churn soak (issue 12 item 4): a fleet reconnecting under steady load, hub resources watched.

``python -m tests.reliability.churn_soak --minutes 10`` (or ``./scripts/soak --minutes 10``)
starts ``iot-flows hub serve`` in a subprocess, connects ``--devices`` lean MQTT devices
from this process (the hub's codec, no paho), and then, until the time is up:

* every minute ``--reconnect-percent`` of the devices drop (half with DISCONNECT, half
  by closing the socket) and connect again, spread over the minute;
* direct methods (``--method-rate`` per second) and desired-property writes
  (``--twin-rate`` per second) go to random devices through the REST API; each device
  answers methods with 200 and reports every desired patch back (a device twin update).

Before the timed run the fleet sends reported patches until the hub's change feed ring
(``--change-feed-capacity``, default 50,000) is full, so the RSS measured after warm-up
already includes the full ring and the 10 % bound sees only growth that does not stop.
It samples the hub's RSS (``/proc/<pid>/status``) and open file descriptors
(``/proc/<pid>/fd``) and prints one JSON summary: RSS after warm-up and at the end,
descriptors with the whole fleet connected and no load before and after, operations
and errors by kind. Expected errors are the ones churn causes (a method to a device
that is reconnecting: 404103 DeviceNotOnline, or 504101 when it dropped mid-call);
anything else is a finding. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from tests.reliability._soak_parts import API_VERSION, DEVICE_KEY, KEEP_ALIVE, HubUnderTest, SoakDevice, Stats

__all__ = ["SoakConfig", "run_soak"]

#: Errors churn causes by design: the target device is reconnecting.
EXPECTED = frozenset({"method:404103", "method:504101"})


@dataclass
class SoakConfig:
    """What one soak run does; times in seconds, rates per second."""

    seconds: float = 600.0
    devices: int = 10_000
    reconnect_percent: float = 5.0  #: of the fleet, per minute
    method_rate: float = 20.0
    twin_rate: float = 20.0
    warmup_seconds: float | None = None  #: default: a quarter of the run, at most 120 s
    sample_seconds: float = 5.0
    rss_tolerance: float = 0.10  #: end RSS within this fraction of the after-warm-up RSS
    fd_slack: int = 8  #: descriptors the hub may hold beyond its start count (logs, WAL)
    hub_args: tuple[str, ...] = ("--log-level", "INFO")  #: INFO: the hub logs why it closes a device
    #: The hub's change feed ring (``--change-feed-capacity``); the soak fills it before the
    #: warm-up, so that the RSS measured after warm-up already holds a full ring.
    change_feed_capacity: int = 50_000
    store: str = "sqlite"  #: or postgresql (a throw-away PostgreSQL 15 server)
    nodes: int = 1  #: 2: two hub nodes sharing the store and a NATS server; devices split between them

    @property
    def warmup(self) -> float:
        return self.warmup_seconds if self.warmup_seconds is not None else min(120.0, self.seconds / 4)


class Soak:
    def __init__(self, config: SoakConfig, hub: HubUnderTest, others: tuple[HubUnderTest, ...] = ()) -> None:
        self.config, self.hub = config, hub
        self.hubs = (hub, *others)  # device i connects to node i % len(hubs); REST goes to the first
        self.stats = Stats()
        self.devices = [SoakDevice(f"soak-{i:05d}", hub.cs.host_name, self.stats) for i in range(config.devices)]
        self.locals = [f"127.0.0.{i}" for i in range(2, 10)]  # spread source addresses over the port space
        self.rng = random.Random(12)
        self.stopping = False

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self.hub.cs.token()}

    async def provision(self, http: httpx.AsyncClient) -> None:
        for i in range(0, len(self.devices), 100):
            body = [{"id": d.device_id, "importMode": "createOrUpdate",
                     "authentication": {"symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY}}}
                    for d in self.devices[i:i + 100]]
            r = await http.post(f"/devices?{API_VERSION}", json=body, headers=self._headers())
            r.raise_for_status()

    async def _connect(self, i: int, device: SoakDevice) -> None:
        for attempt in range(5):
            try:
                await device.connect(self.hubs[i % len(self.hubs)].mqtt_port, self.locals[i % len(self.locals)])
                self.stats.ops["connect"] += 1
                return
            except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                self.stats.errors[f"device:connect_{type(exc).__name__}"] += 1
                await asyncio.sleep(0.5 * (attempt + 1))

    async def connect_all(self, concurrency: int = 200) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, device: SoakDevice) -> None:
            async with sem:
                await self._connect(i, device)

        await asyncio.gather(*(one(i, d) for i, d in enumerate(self.devices)))

    async def churn(self) -> None:
        """Each minute, reconnect_percent of the fleet drops and reconnects, spread evenly."""
        per_second = len(self.devices) * self.config.reconnect_percent / 100 / 60
        if per_second <= 0:
            return
        credit, tasks = 0.0, set()
        while not self.stopping:
            await asyncio.sleep(0.2)
            credit += per_second * 0.2
            while credit >= 1:
                credit -= 1
                i = self.rng.randrange(len(self.devices))
                device = self.devices[i]
                if not device.online:
                    continue
                task = asyncio.create_task(self._reconnect(i, device))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def recover(self) -> None:
        """Reconnect devices the hub closed unexpectedly (counted as errors), as SDKs do."""
        tasks: set[asyncio.Task[None]] = set()
        while not self.stopping:
            await asyncio.sleep(1)
            for i, device in enumerate(self.devices):
                if device.closed_by_hub.is_set():
                    device.closed_by_hub.clear()
                    task = asyncio.create_task(self._connect(i, device))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def keep_alive(self) -> None:
        """PINGREQ from every online device every KEEP_ALIVE / 2 seconds, spread evenly."""
        period, tick = KEEP_ALIVE // 2, 0
        while not self.stopping:
            await asyncio.sleep(1)
            for device in self.devices[tick % period :: period]:
                device.ping()
            tick += 1

    async def _reconnect(self, i: int, device: SoakDevice) -> None:
        device.drop(clean=self.rng.random() < 0.5)
        self.stats.ops["reconnect"] += 1
        await asyncio.sleep(self.rng.uniform(0.1, 2.0))
        await self._connect(i, device)

    async def load(self, http: httpx.AsyncClient, kind: str, rate: float) -> None:
        if rate <= 0:
            return
        sem = asyncio.Semaphore(64)
        tasks: set[asyncio.Task[None]] = set()
        interval, next_at = 1 / rate, time.monotonic()
        while not self.stopping:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if sem.locked():
                self.stats.ops[f"{kind}_skipped"] += 1  # the driver is saturated, not the hub
                continue
            device = self.devices[self.rng.randrange(len(self.devices))]
            task = asyncio.create_task(self._call(http, sem, kind, device))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def _call(self, http: httpx.AsyncClient, sem: asyncio.Semaphore, kind: str, device: SoakDevice) -> None:
        async with sem:
            try:
                if kind == "method":
                    r = await http.post(f"/twins/{device.device_id}/methods?{API_VERSION}", headers=self._headers(),
                                        json={"methodName": "ping", "payload": {"n": 1},
                                              "responseTimeoutInSeconds": 10, "connectTimeoutInSeconds": 0})
                else:
                    r = await http.patch(f"/twins/{device.device_id}?{API_VERSION}", headers=self._headers(),
                                         json={"properties": {"desired": {"soak": self.rng.random()}}})
            except httpx.HTTPError as exc:
                self.stats.errors[f"{kind}:{type(exc).__name__}"] += 1
                return
            if r.status_code == 200:
                self.stats.ops[kind] += 1
                return
            try:
                code = json.loads(r.json()["Message"])["errorCode"]
            except Exception:  # noqa: BLE001 - classify what the body allows
                code = r.status_code
            self.stats.errors[f"{kind}:{code}"] += 1

    async def changes_recorded(self, http: httpx.AsyncClient) -> int | None:
        """How many changes the hub's change feed has recorded (it keeps the newest 50,000)."""
        try:
            r = await http.get("/iot-flows/changes", params={"since": -1}, headers=self._headers())
            return int(r.json()["next"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    async def fill_change_feed(self, http: httpx.AsyncClient, capacity: int, timeout: float = 600) -> int:
        """Reported patches from the fleet until the hub's change feed holds ``capacity`` changes.

        Round by round, every online device reports once; the next round starts when the
        hub has answered the round (or after 30 s). Returns the changes recorded then.
        """
        deadline = time.monotonic() + timeout
        recorded = await self.changes_recorded(http) or 0
        n = 0
        while recorded < capacity and time.monotonic() < deadline:
            n += 1
            sent = sum(d.report({"prefill": n}) for d in self.devices[: capacity - recorded])
            wanted = self.stats.ops["prefill_report"] + sent
            round_end = time.monotonic() + 30
            while self.stats.ops["prefill_report"] < wanted and time.monotonic() < round_end:
                await asyncio.sleep(0.1)
            recorded = await self.changes_recorded(http) or recorded
        return recorded

    async def sample(self, samples: list[dict[str, Any]], start: float) -> None:
        while not self.stopping:
            if self.hub.alive():
                samples.append({"t": round(time.monotonic() - start, 1), "rss_kb": self.hub.rss_kb(),
                                "fds": self.hub.fds(), "online": sum(d.online for d in self.devices)})
            await asyncio.sleep(self.config.sample_seconds)

    async def settle(self, timeout: float = 120) -> int:
        """Wait until every device is online again; the hub's descriptor count then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(d.online for d in self.devices):
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # the hub closes what the load's HTTP connections left
        return self.hub.fds()


async def _run(config: SoakConfig, hub: HubUnderTest, others: tuple[HubUnderTest, ...] = ()) -> dict[str, Any]:
    soak = Soak(config, hub, others)
    # Idle connections are dropped before uvicorn's 5 s keep-alive closes them (else a request
    # sent on a connection the server is closing fails with ReadError: a client-side race).
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32, keepalive_expiry=3.0)
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=hub.base_url, timeout=60) as http:
        await soak.provision(http)
    await soak.connect_all()
    connect_seconds = time.monotonic() - t0
    async with httpx.AsyncClient(base_url=hub.base_url, timeout=60) as http:
        prefilled = await soak.fill_change_feed(http, config.change_feed_capacity)
    fill_seconds = time.monotonic() - t0 - connect_seconds
    fds_start = await soak.settle()
    rss_connected = hub.rss_kb()
    other = [{"rss_kb": {"connected_change_feed_full": h.rss_kb()}, "fds": {"start": h.fds()}} for h in others]
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=hub.base_url, timeout=60, limits=limits) as http:
        workers = [
            asyncio.create_task(soak.churn()),
            asyncio.create_task(soak.load(http, "method", config.method_rate)),
            asyncio.create_task(soak.load(http, "twin_write", config.twin_rate)),
            asyncio.create_task(soak.sample(samples, start)),
            asyncio.create_task(soak.keep_alive()),
            asyncio.create_task(soak.recover()),
        ]
        await asyncio.sleep(config.warmup)
        rss_warm, changes_warm = hub.rss_kb(), await soak.changes_recorded(http)
        for h, o in zip(others, other, strict=True):
            o["rss_kb"]["after_warmup"] = h.rss_kb()
        remaining = config.seconds - config.warmup
        while remaining > 0 and hub.alive():
            await asyncio.sleep(min(1.0, remaining))
            remaining -= 1.0
        rss_end = hub.rss_kb() if hub.alive() else None
        for h, o in zip(others, other, strict=True):
            o["rss_kb"]["end"] = h.rss_kb() if h.alive() else None
        changes_end = await soak.changes_recorded(http) if hub.alive() else None
        soak.stopping = True
        await asyncio.gather(*workers)
    fds_end = await soak.settle() if hub.alive() else None
    for h, o in zip(others, other, strict=True):
        o["fds"]["end"] = h.fds() if h.alive() else None
        warm, end = o["rss_kb"]["after_warmup"], o["rss_kb"]["end"]
        o["rss_kb"]["growth_after_warmup"] = None if end is None else round((end - warm) / warm, 4)
    for device in soak.devices:
        device.drop(clean=True)
    unexpected = {k: v for k, v in soak.stats.errors.items() if k not in EXPECTED}
    growth = (rss_end - rss_warm) / rss_warm if rss_end is not None else None
    checks = {
        "hub_alive": hub.alive() and all(h.alive() for h in others),
        "other_nodes_rss_flat": all(o["rss_kb"]["growth_after_warmup"] is not None
                                    and o["rss_kb"]["growth_after_warmup"] <= config.rss_tolerance for o in other),
        "other_nodes_fds_flat": all(o["fds"]["end"] is not None
                                    and o["fds"]["end"] <= o["fds"]["start"] + config.fd_slack for o in other),
        "rss_flat": growth is not None and growth <= config.rss_tolerance,
        "change_feed_full_before_warmup": prefilled >= config.change_feed_capacity,
        "fds_flat": fds_end is not None and fds_end <= fds_start + config.fd_slack,
        "no_unexpected_errors": not unexpected,
        "load_ran": soak.stats.ops["method"] > 0 and soak.stats.ops["twin_write"] > 0,
    }
    return {
        "devices": config.devices,
        "seconds": config.seconds,
        "warmup_seconds": config.warmup,
        "reconnect_percent_per_minute": config.reconnect_percent,
        "connect_seconds": round(connect_seconds, 1),
        "change_feed_fill_seconds": round(fill_seconds, 1),
        "rss_kb": {"connected_change_feed_full": rss_connected, "after_warmup": rss_warm, "end": rss_end,
                   "max": max((s["rss_kb"] for s in samples), default=None),
                   "growth_after_warmup": None if growth is None else round(growth, 4)},
        "fds": {"start": fds_start, "end": fds_end},
        # The hub's change feed keeps the newest --change-feed-capacity changes in memory; it is
        # full before the warm-up starts. Bytes of RSS growth per change recorded after warm-up:
        "change_feed": {"capacity": config.change_feed_capacity, "before_warmup": prefilled,
                        "after_warmup": changes_warm, "end": changes_end,
                        "rss_bytes_per_change": _per_change(rss_warm, rss_end, changes_warm, changes_end)},
        "store": config.store,
        "nodes": config.nodes,
        "other_nodes": other,
        "ops": dict(soak.stats.ops),
        "errors": dict(soak.stats.errors),
        "unexpected_errors": unexpected,
        "checks": checks,
        "ok": all(checks.values()),
        "samples": samples,
    }


def _per_change(rss0: int, rss1: int | None, n0: int | None, n1: int | None) -> float | None:
    if rss1 is None or n0 is None or n1 is None or n1 <= n0:
        return None
    return round((rss1 - rss0) * 1024 / (n1 - n0), 1)


def run_soak(config: SoakConfig) -> dict[str, Any]:
    """Run one churn soak against a fresh hub subprocess; the JSON-ready summary."""
    folder = Path(tempfile.mkdtemp(prefix="iot-flows-soak-"))
    args = (*config.hub_args, "--change-feed-capacity", str(config.change_feed_capacity))
    with ExitStack() as stack:
        db = None
        if config.store == "postgresql":
            from tests.pgcluster import PgCluster

            db = stack.enter_context(PgCluster()).create_database("soak")
        elif config.nodes > 1:
            db = str(folder / "hub.db")  # the nodes share one SQLite file
        hubs: list[HubUnderTest] = []
        if config.nodes > 1:
            from tests.cluster.conftest import NatsServer

            nats = NatsServer().start()
            stack.callback(nats.stop)
            for i in range(config.nodes):
                node = chr(ord("a") + i)
                (folder / node).mkdir()
                hubs.append(HubUnderTest(folder / node, (*args, "--bus", nats.url, "--node-id", node), db=db))
        else:
            hubs.append(HubUnderTest(folder, args, db=db))
        try:
            result = asyncio.run(_run(config, hubs[0], tuple(hubs[1:])))
        finally:
            codes = [h.stop() for h in hubs]
    result["hub_exit_code"] = codes[0] if len(codes) == 1 else (0 if all(c == 0 for c in codes) else codes)
    result["hub_log"] = hubs[0].log_summary()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="Run length (default 10).")
    parser.add_argument("--devices", type=int, default=10_000, help="Simulated devices (default 10,000).")
    parser.add_argument("--reconnect-percent", type=float, default=5.0, help="Fleet share reconnecting per minute.")
    parser.add_argument("--method-rate", type=float, default=20.0, help="Direct methods per second.")
    parser.add_argument("--twin-rate", type=float, default=20.0, help="Desired-property writes per second.")
    parser.add_argument("--warmup-seconds", type=float, default=None, help="Default: a quarter of the run, <= 120.")
    parser.add_argument("--change-feed-capacity", type=int, default=50_000,
                        help="The hub's change feed ring; filled before the warm-up (default 50,000).")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                        help="The hub's store (postgresql: a throw-away PostgreSQL 15 server).")
    parser.add_argument("--nodes", type=int, default=1, help="Hub nodes sharing the store over NATS (default 1).")
    parser.add_argument("--samples", action="store_true", help="Keep the RSS/fd samples in the JSON output.")
    args = parser.parse_args(argv)
    config = SoakConfig(seconds=args.minutes * 60, devices=args.devices, reconnect_percent=args.reconnect_percent,
                        method_rate=args.method_rate, twin_rate=args.twin_rate, warmup_seconds=args.warmup_seconds,
                        change_feed_capacity=args.change_feed_capacity, store=args.store, nodes=args.nodes)
    result = run_soak(config)
    if not args.samples:
        result.pop("samples")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
