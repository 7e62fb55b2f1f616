"""The soak's parts: the hub under test (a subprocess) and lean devices on the hub's codec.

A :class:`SoakDevice` answers direct methods with 200 and reports every desired patch
back; each TCP connection is its own :class:`_Link`, so a late event of a replaced
connection never touches the current one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iot_flows._sas import ConnectionString, generate_sas_token
from iot_flows.mqtt import Connect, Disconnect, PacketReader, Pingreq, Publish, Subscribe, encode

__all__ = ["API_VERSION", "DEVICE_KEY", "KEEP_ALIVE", "HubUnderTest", "SoakDevice", "Stats"]

DEVICE_KEY = "c29hay1rZXktMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY="
API_VERSION = "api-version=2021-04-12"
#: Devices ping every KEEP_ALIVE / 2 seconds (the hub closes a silent one at 1.5x).
KEEP_ALIVE = 120
_PINGREQ = encode(Pingreq())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubUnderTest:
    """``iot-flows hub serve`` in a subprocess (stderr to a file, so it never blocks)."""

    def __init__(self, folder: Path, args: tuple[str, ...], db: str | None = None,
                 ports: tuple[int, int] | None = None) -> None:
        self.mqtt_port, self.http_port = ports or (_free_port(), _free_port())
        self.log = open(folder / "hub.log", "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iot_flows.cli", "hub", "serve", "--db", db or str(folder / "hub.db"),
             "--mqtt-port", str(self.mqtt_port), "--http-port", str(self.http_port), *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=folder,
        )
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith("HostName="):
                self.connection_string = line.strip()
                break
        else:
            raise RuntimeError(f"the hub exited before it was ready; see {folder / 'hub.log'}")
        self.cs = ConnectionString.parse(self.connection_string)
        self.base_url = f"http://127.0.0.1:{self.http_port}"

    def rss_kb(self) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def log_summary(self) -> dict[str, int]:
        """What the hub logged, by kind: ``closing: keep-alive expired``, ``refusing: ...``."""
        kinds: Counter[str] = Counter()
        for line in Path(self.log.name).read_text(errors="replace").splitlines():
            m = re.search(r"(closing|refusing device) \S+: ([^(']+)", line)
            if m:
                kinds[f"{m.group(1).split()[0]}: {m.group(2).strip()}"] += 1
            elif " WARNING " in line or " ERROR " in line or "Traceback" in line:
                kinds["warning_or_error"] += 1
        return dict(kinds)

    def kill9(self) -> None:
        """``kill -9`` the hub (no shutdown of any kind) and reap it."""
        self.proc.kill()
        self.proc.wait(30)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        self.proc.terminate()
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.log.close()
        return code


@dataclass
class Stats:
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class _Link(asyncio.Protocol):
    """One TCP connection of a device; events of a replaced connection are ignored."""

    def __init__(self, device: SoakDevice) -> None:
        self.device = device
        self.transport: asyncio.Transport | None = None
        self.reader = PacketReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.device.link_made(self)

    def data_received(self, data: bytes) -> None:
        for packet in self.reader.feed(data):
            self.device.packet(self, packet)

    def connection_lost(self, exc: Exception | None) -> None:
        self.device.link_lost(self)


class SoakDevice:
    """A lean device: answers methods with 200, reports each desired patch back."""

    def __init__(self, device_id: str, hostname: str, stats: Stats) -> None:
        self.device_id, self.hostname, self.stats = device_id, hostname, stats
        self.link: _Link | None = None
        self.ready: asyncio.Future[None] | None = None
        self.online = False
        self.leaving = False  # a drop we caused
        self.closed_by_hub: asyncio.Event = asyncio.Event()
        self._rid = 0

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.link.transport if self.link is not None else None

    async def connect(self, port: int, local: str) -> None:
        loop = asyncio.get_running_loop()
        self.ready, self.leaving = loop.create_future(), False
        self.link = _Link(self)
        link = self.link
        try:
            await loop.create_connection(lambda: link, "127.0.0.1", port, local_addr=(local, 0))
            await asyncio.wait_for(self.ready, 60)
        except BaseException:
            if link.transport is not None:
                link.transport.close()
            raise

    def link_made(self, link: _Link) -> None:
        password = generate_sas_token(f"{self.hostname}/devices/{self.device_id}", DEVICE_KEY).encode()
        link.transport.write(encode(Connect(  # type: ignore[union-attr, call-arg]
            client_id=self.device_id, username=f"{self.hostname}/{self.device_id}/?{API_VERSION}",
            password=password, clean_session=False, keep_alive=KEEP_ALIVE)))

    def link_lost(self, link: _Link) -> None:
        if link is not self.link:
            return  # an older connection of this device
        was_online, self.online = self.online, False
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before CONNACK"))
        if was_online and not self.leaving:
            self.stats.errors["device:closed_by_hub"] += 1
            self.closed_by_hub.set()

    def packet(self, link: _Link, packet: Any) -> None:
        if link is not self.link or link.transport is None:
            return
        name = type(packet).__name__
        if name == "Connack":
            if packet.return_code != 0:
                self.stats.errors[f"device:connack_{packet.return_code}"] += 1
                link.transport.close()
                return
            link.transport.write(encode(Subscribe(packet_id=1, topics=(
                ("$iothub/methods/POST/#", 0), ("$iothub/twin/PATCH/properties/desired/#", 0),
                ("$iothub/twin/res/#", 0)))))
        elif name == "Suback":
            self.online = True
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
        elif name == "Publish":
            self._on_publish(packet.topic, packet.payload)

    def _on_publish(self, topic: str, payload: bytes) -> None:
        assert self.transport is not None
        if topic.startswith("$iothub/methods/POST/"):
            rid = topic.rsplit("$rid=", 1)[1]
            self.transport.write(encode(Publish(topic=f"$iothub/methods/res/200/?$rid={rid}", payload=b'{"ok":true}')))
        elif topic.startswith("$iothub/twin/PATCH/properties/desired/"):
            desired = json.loads(payload)
            self._rid += 1
            report = json.dumps({"soak": desired.get("soak"), "seenVersion": desired.get("$version")}).encode()
            self.transport.write(encode(Publish(
                topic=f"$iothub/twin/PATCH/properties/reported/?$rid={self._rid}", payload=report)))
        elif topic.startswith("$iothub/twin/res/"):
            status = topic.split("/")[3]
            kind = "prefill_report" if "$rid=f" in topic else "device_report"
            if status == "204":
                self.stats.ops[kind] += 1
            else:
                self.stats.errors[f"{kind}:{status}"] += 1

    def report(self, patch: dict[str, Any]) -> bool:
        """Send one reported-properties patch (answered on ``$iothub/twin/res``); False when offline."""
        if not self.online or self.transport is None:
            return False
        self._rid += 1
        self.transport.write(encode(Publish(
            topic=f"$iothub/twin/PATCH/properties/reported/?$rid=f{self._rid}", payload=json.dumps(patch).encode())))
        return True

    def ping(self) -> None:
        if self.online and self.transport is not None:
            self.transport.write(_PINGREQ)

    def drop(self, clean: bool) -> None:
        self.leaving, self.online = True, False
        if self.transport is not None:
            if clean:
                self.transport.write(encode(Disconnect()))
            self.transport.close()
