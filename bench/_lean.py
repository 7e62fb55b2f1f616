"""Bench helpers: a hub subprocess and lean asyncio MQTT devices built on the project's codec.

The devices are deliberately minimal (no paho) so that the benchmarks measure the hub,
not the client library.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from iot_flows._sas import ConnectionString, generate_sas_token
from iot_flows.mqtt import Connect, PacketReader, Publish, Subscribe, encode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


class HubProc:
    def __init__(self, *extra: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="iotflows-bench-")
        self.mqtt_port, self.http_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iot_flows.cli", "hub", "serve", "--db", f"{self.dir}/hub.db",
             "--mqtt-port", str(self.mqtt_port), "--http-port", str(self.http_port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "IOT_FLOWS_HUB_PROFILE": f"{self.dir}/hub.json"},  # not the user's ./.iot-flows
        )
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith("HostName="):
                self.connection_string = line.strip()
                break
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.cs = ConnectionString.parse(self.connection_string)

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.cs.token()}

    def provision(self, ids: list[str], tags: dict[str, Any] | None = None) -> dict[str, str]:
        """Bulk-create devices with one shared key; return id -> key."""
        key = "bGVhbmJlbmNoLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDE="
        with httpx.Client(base_url=self.base_url, timeout=60) as http:
            for i in range(0, len(ids), 100):
                body = [{"id": d, "importMode": "createOrUpdate",
                         "authentication": {"symmetricKey": {"primaryKey": key, "secondaryKey": key}}} for d in ids[i:i + 100]]
                r = http.post("/devices?api-version=2021-04-12", json=body, headers=self.headers())
                r.raise_for_status()
            if tags:
                for d in ids:
                    http.patch(f"/twins/{d}?api-version=2021-04-12", json={"tags": tags}, headers=self.headers())
        return {d: key for d in ids}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.proc.stdout.close()  # type: ignore[union-attr]


class LeanDevice(asyncio.Protocol):
    """Connects, subscribes to methods and answers each method request with 200."""

    def __init__(self, device_id: str, key: str, hostname: str, connected: asyncio.Future[None]) -> None:
        self.device_id, self.key, self.hostname = device_id, key, hostname
        self.reader = PacketReader()
        self.connected = connected
        self.transport: asyncio.Transport | None = None
        self.calls = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        password = generate_sas_token(f"{self.hostname}/devices/{self.device_id}", self.key).encode()
        transport.write(encode(Connect(client_id=self.device_id, username=f"{self.hostname}/{self.device_id}/?api-version=2021-04-12",  # type: ignore[attr-defined]
                                       password=password, clean_session=False, keep_alive=600)))

    def data_received(self, data: bytes) -> None:
        for packet in self.reader.feed(data):
            name = type(packet).__name__
            if name == "Connack":
                self.transport.write(encode(Subscribe(packet_id=1, topics=(("$iothub/methods/POST/#", 0),))))  # type: ignore[union-attr]
            elif name == "Suback":
                if not self.connected.done():
                    self.connected.set_result(None)
            elif name == "Publish" and packet.topic.startswith("$iothub/methods/POST/"):
                self.calls += 1
                rid = packet.topic.rsplit("$rid=", 1)[1]
                self.transport.write(encode(Publish(topic=f"$iothub/methods/res/200/?$rid={rid}", payload=b'{"ok":true}')))  # type: ignore[union-attr]


async def connect_fleet(hub: HubProc, keys: dict[str, str], concurrency: int = 200) -> tuple[list[LeanDevice], float]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    devices: list[LeanDevice] = []
    addresses = [f"127.0.0.{i}" for i in range(2, 10)]  # spread source addresses: kernel port search

    async def one(i: int, device_id: str) -> None:
        async with sem:
            fut: asyncio.Future[None] = loop.create_future()
            dev = LeanDevice(device_id, keys[device_id], hub.cs.host_name, fut)
            await loop.create_connection(lambda: dev, "127.0.0.1", hub.mqtt_port, local_addr=(addresses[i % len(addresses)], 0))
            await asyncio.wait_for(fut, 60)
            devices.append(dev)

    start = time.perf_counter()
    await asyncio.gather(*(one(i, d) for i, d in enumerate(keys)))
    return devices, time.perf_counter() - start


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))
    os.sys.stdout.flush()  # type: ignore[attr-defined]
