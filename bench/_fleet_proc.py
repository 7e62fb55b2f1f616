"""A lean MQTT fleet in its own process, driven over stdin/stdout (used by ``bench.run``).

    python -m bench._fleet_proc --mode hub --host 127.0.0.1 --port 1883 --count 1000 \
        --hostname 127.0.0.1 --key <device key> [--tls-ca ca.pem]

The same devices talk to the bundled hub (``--mode hub``: SAS CONNECT, ``$iothub/...``
topics, twin GET on connect) or to a plain broker (``--mode broker``: anonymous CONNECT,
``d/{id}/...`` request topics, ``r/{id}/...`` reply topics, one echo round trip on
connect), so that a baseline broker and the hub are measured with the same client code.

Several processes share a fleet (``--first``/``--count`` slices, ``--wait-go``: each prints
``{"event": "started"}`` and connects on the stdin line ``go``, so that all start at once).

Protocol: after connecting every device the process prints one JSON line
``{"event": "ready", "connect_seconds": ..., "connected": n, "failed": n}``. Then each
stdin line is a command answered by one JSON line: ``stats`` (method calls answered, CPU
seconds, RSS and peak RSS in KB), ``patch`` (every device sends one reported-properties
PATCH and waits for its 204; hub mode only). EOF closes every socket and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import time
from pathlib import Path

from iot_flows._sas import generate_sas_token
from iot_flows.mqtt import Connect, PacketReader, Publish, Subscribe, encode

REPLY_PAYLOAD = b'{"ok":true}'
SOURCE_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def cpu_seconds(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Device(asyncio.Protocol):
    """One device: connect, subscribe, one request/response, then answer method requests with 200."""

    calls = 0  # class-wide counter: method requests answered by this process

    def __init__(self, device_id: str, args: argparse.Namespace, ready: asyncio.Future[None]) -> None:
        self.device_id, self.args, self.ready = device_id, args, ready
        self.reader = PacketReader()
        self.transport: asyncio.Transport | None = None
        self.hub = args.mode == "hub"
        self.reply_prefix = "$iothub/methods/res/200/?$rid=" if self.hub else f"r/{device_id}/200/?$rid="
        self.patch_done: asyncio.Future[None] | None = None
        self.reply_prefix_bytes = self.reply_prefix.encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.hub:
            host = self.args.hostname
            password = generate_sas_token(f"{host}/devices/{self.device_id}", self.args.key).encode()
            packet = Connect(client_id=self.device_id, username=f"{host}/{self.device_id}/?api-version=2021-04-12",
                             password=password, clean_session=False, keep_alive=600)
        else:
            packet = Connect(client_id=self.device_id, clean_session=True, keep_alive=600)
        transport.write(encode(packet))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.device_id}: connection lost {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.ready.done() and not self.reader.buffered:
            data = self._fast_method_requests(data)
            if not data:
                return
        write = self.transport.write  # type: ignore[union-attr]
        for packet in self.reader.feed(data):
            if type(packet) is Publish:
                topic = packet.topic
                rid = topic.rsplit("$rid=", 1)[-1]
                if "/POST/" in topic:
                    Device.calls += 1
                    write(encode(Publish(topic=self.reply_prefix + rid, payload=REPLY_PAYLOAD)))
                elif not self.ready.done():  # the twin GET (hub) or echo (broker) answer
                    self.ready.set_result(None)
                elif self.patch_done is not None and not self.patch_done.done():
                    self.patch_done.set_result(None)
                continue
            name = type(packet).__name__
            if name == "Connack":
                if packet.return_code != 0:  # type: ignore[attr-defined]
                    self.ready.set_exception(ConnectionError(f"{self.device_id}: CONNACK {packet.return_code}"))  # type: ignore[attr-defined]
                    return
                topics = ((("$iothub/methods/POST/#", 0), ("$iothub/twin/res/#", 0)) if self.hub
                          else ((f"d/{self.device_id}/#", 0),))
                write(encode(Subscribe(packet_id=1, topics=topics)))
            elif name == "Suback":
                topic = "$iothub/twin/GET/?$rid=0" if self.hub else f"d/{self.device_id}/echo/?$rid=0"
                write(encode(Publish(topic=topic, payload=b"")))

    def _fast_method_requests(self, data: bytes) -> bytes:
        """Answer whole QoS 0 method-request PUBLISHes straight from the bytes (one write).

        The lean path: no packet objects, no codec. Anything else (or a packet split across
        reads) is returned for the general path, from the first such byte on.
        """
        pos, end, replies = 0, len(data), []
        prefix = self.reply_prefix_bytes
        while pos + 4 <= end and data[pos] == 0x30 and data[pos + 1] < 0x80:
            stop = pos + 2 + data[pos + 1]
            tlen = (data[pos + 2] << 8) | data[pos + 3]
            if stop > end or pos + 4 + tlen > stop:
                break
            topic = data[pos + 4:pos + 4 + tlen]
            at = topic.rfind(b"$rid=")
            if at < 0 or b"/POST/" not in topic:
                break
            reply_topic = prefix + topic[at + 5:]
            if 2 + len(reply_topic) + len(REPLY_PAYLOAD) >= 0x80:
                break  # a two-byte remaining length: the general path encodes it
            replies.append(b"%c%c%c%c%s%s" % (0x30, 2 + len(reply_topic) + len(REPLY_PAYLOAD),
                                              len(reply_topic) >> 8, len(reply_topic) & 0xFF, reply_topic, REPLY_PAYLOAD))
            pos = stop
        if replies:
            Device.calls += len(replies)
            self.transport.write(b"".join(replies))  # type: ignore[union-attr]
        return data[pos:] if pos else data

    def patch(self) -> asyncio.Future[None]:
        self.patch_done = asyncio.get_running_loop().create_future()
        self.transport.write(encode(Publish(  # type: ignore[union-attr]
            topic="$iothub/twin/PATCH/properties/reported/?$rid=1", payload=b'{"bench":{"n":1}}')))
        return self.patch_done


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    ids = [f"{args.prefix}-{i:05d}" for i in range(args.first, args.first + args.count)]
    devices: list[Device] = []
    failed = 0
    sem = asyncio.Semaphore(args.concurrency)
    ctx = None
    if args.tls_ca:
        ctx = ssl.create_default_context(cafile=args.tls_ca)

    async def one(i: int, device_id: str) -> None:
        nonlocal failed
        async with sem:
            ready: asyncio.Future[None] = loop.create_future()
            dev = Device(device_id, args, ready)
            try:
                await loop.create_connection(lambda: dev, args.host, args.port, ssl=ctx,
                                             server_hostname="localhost" if ctx else None,
                                             local_addr=(SOURCE_ADDRESSES[(args.first + i) % len(SOURCE_ADDRESSES)], 0))
                await asyncio.wait_for(ready, 120)
                devices.append(dev)
            except (OSError, TimeoutError, ConnectionError) as exc:
                failed += 1
                if failed <= 3:
                    print(f"fleet: {device_id}: {exc}", file=sys.stderr)

    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    if args.wait_go:  # several fleet processes start connecting at the same moment
        emit({"event": "started"})
        await stdin.readline()
    start = time.perf_counter()
    await asyncio.gather(*(one(i, d) for i, d in enumerate(ids)))
    emit({"event": "ready", "connect_seconds": time.perf_counter() - start, "connected": len(devices), "failed": failed})
    while line := (await stdin.readline()).decode().strip():
        if line == "stats":
            emit({"calls": Device.calls, "cpu_seconds": cpu_seconds(), **proc_status()})
        elif line == "patch":
            t0 = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(d.patch() for d in devices)), 300)
            emit({"patch_seconds": time.perf_counter() - t0, "patches": len(devices)})
    for dev in devices:
        dev.transport.close()  # type: ignore[union-attr]
    await asyncio.sleep(0.2)


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("hub", "broker"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--first", type=int, default=0, help="number of the first device ({prefix}-{first:05d})")
    parser.add_argument("--wait-go", action="store_true", help="print a started event, connect after a stdin line")
    parser.add_argument("--hostname", default="127.0.0.1", help="IoT hub host name in SAS tokens")
    parser.add_argument("--key", default="", help="device symmetric key (hub mode)")
    parser.add_argument("--tls-ca", default=None)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="event loop (auto: uvloop when installed; it halves the fleet's CPU per round trip)")
    parser.add_argument("--uvloop", action="store_const", const="uvloop", dest="loop", help="same as --loop uvloop")
    ns = parser.parse_args()
    if ns.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if ns.loop == "uvloop":
                raise SystemExit("fleet: --loop uvloop needs uvloop: pip install uvloop (the `hub` extra)") from None
        else:
            uvloop.install()
    asyncio.run(main(ns))
