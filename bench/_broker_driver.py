"""The baseline's "service": method round trips through a plain broker to the lean fleet.

One MQTT client subscribes to every reply topic (``r/#``) and publishes one request per
device (``d/{id}/POST/lockDoor/?$rid=N``) with at most ``window`` in flight, the way the
hub's job engine fans out (``device_concurrency``). Also used for unloaded latency.
"""

from __future__ import annotations

import asyncio
import time

from iot_flows.mqtt import Connect, PacketReader, Publish, Subscribe, encode


class _Service(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = PacketReader()
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_reply: asyncio.Queue[str] | None = None
        self.replies = 0
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(encode(Connect(client_id="bench-service", keep_alive=600)))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for packet in self.reader.feed(data):
            name = type(packet).__name__
            if name == "Connack":
                self.transport.write(encode(Subscribe(packet_id=1, topics=(("r/#", 0),))))  # type: ignore[union-attr]
            elif name == "Suback":
                self.subscribed.set_result(None)
            elif name == "Publish":
                rid = packet.topic.rsplit("$rid=", 1)[-1]  # type: ignore[attr-defined]
                waiter = self.waiters.pop(rid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)


async def _connect(port: int) -> _Service:
    loop = asyncio.get_running_loop()
    service = _Service()
    await loop.create_connection(lambda: service, "127.0.0.1", port)
    await asyncio.wait_for(service.subscribed, 30)
    return service


async def round_trips(port: int, ids: list[str], window: int = 1000, timeout: float = 30) -> dict[str, float]:
    """One request/reply per device through the broker; returns seconds and round trips/s."""
    service = await _connect(port)
    sem = asyncio.Semaphore(window)
    loop = asyncio.get_running_loop()
    write = service.transport.write  # type: ignore[union-attr]

    async def one(i: int, device_id: str) -> None:
        async with sem:
            fut: asyncio.Future[None] = loop.create_future()
            rid = str(i)
            service.waiters[rid] = fut
            write(encode(Publish(topic=f"d/{device_id}/POST/lockDoor/?$rid={rid}", payload=b"{}")))
            await asyncio.wait_for(fut, timeout)

    start = time.perf_counter()
    await asyncio.gather(*(one(i, d) for i, d in enumerate(ids)))
    seconds = time.perf_counter() - start
    service.transport.close()  # type: ignore[union-attr]
    return {"seconds": seconds, "per_second": len(ids) / seconds}


async def latencies(port: int, device_id: str, calls: int) -> list[float]:
    """Sequential request/reply round trips to one device, in milliseconds."""
    service = await _connect(port)
    loop = asyncio.get_running_loop()
    out = []
    for i in range(calls):
        fut: asyncio.Future[None] = loop.create_future()
        service.waiters[str(i)] = fut
        t0 = time.perf_counter()
        service.transport.write(encode(Publish(topic=f"d/{device_id}/POST/ping/?$rid={i}", payload=b"{}")))  # type: ignore[union-attr]
        await asyncio.wait_for(fut, 10)
        out.append((time.perf_counter() - t0) * 1000)
    service.transport.close()  # type: ignore[union-attr]
    return out
