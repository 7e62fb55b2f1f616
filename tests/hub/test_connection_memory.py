"""What the hub keeps per connected device (issue 13's TLS memory regression), checked by
counting, not by timing: no per-connection leftovers once CONNECT completed, one
prepared statement for the batched connect-path reads whatever the batch size, and a
TLS listener keeps each connection's large read buffer (uvloop: 256 KiB) a fresh mapping.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.store import DeviceRecord, open_store
from tests.support import Service, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _fold(sql: str) -> str:
    """A statement's text as prepared: the trace shows it with its parameters expanded."""
    return re.sub(r"'(?:[^']|'')*'", "?", sql)


def test_batched_connect_reads_prepare_one_statement_whatever_the_batch_size(tmp_path: Path) -> None:
    """A connect burst batches record and session reads per tick; ``IN (?, ?, ...)`` made one
    statement text per batch size, and sqlite3 caches up to 128 prepared statements per
    connection: megabytes held after a burst. One text per kind of read now."""

    async def run() -> None:
        store: Any = await open_store(str(tmp_path / "hub.db"))
        try:
            for i in range(40):
                await store.insert(DeviceRecord(device_id=f"d{i}", generation_id="1", device_etag="e",
                                                status_updated_time="t"))  # fmt: skip
                await store.set_subscriptions(f"d{i}", ["$iothub/twin/res/#"])
            seen: list[str] = []
            store._conn.set_trace_callback(seen.append)
            for n in (1, 2, 3, 5, 8, 13, 40):
                ids = [f"d{i}" for i in range(n)]
                await asyncio.gather(*(store.get(d) for d in ids))
                await asyncio.gather(*(store.get_subscriptions(d) for d in ids))
                await asyncio.gather(*(store.get_for_connect(d) for d in ids))
            store._conn.set_trace_callback(None)
            texts = {sql for sql in seen if "FROM devices WHERE" in sql}
            assert len({_fold(sql) for sql in texts}) == 3, texts  # record, session, CONNECT (both in one)
            # still one answer per caller, unknown ids included
            got = await asyncio.gather(store.get("d3"), store.get("nope"), store.get_subscriptions("d7"))
            assert got[0] is not None and got[0].device_id == "d3" and got[1] is None
            assert got[2] == ["$iothub/twin/res/#"]
            record, filters = await store.get_for_connect("d5")
            assert record is not None and record.device_id == "d5" and filters == ["$iothub/twin/res/#"]
            assert await store.get_for_connect("nope") == (None, [])
            assert [r.device_id for r in await store.get_many(["d9", "d1", "nope"])] == ["d1", "d9"]
        finally:
            await store.close()

    asyncio.run(run())


_MMAP_PROBE = textwrap.dedent("""
    import ctypes, sys
    from pathlib import Path
    from tests.tlsutil import make_test_pki
    from iot_flows.hub import HubSettings
    from iot_flows.hub._embedded import EmbeddedHub

    libc = ctypes.CDLL(None)
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    big = libc.malloc(16 << 20)
    libc.free(big)  # glibc raises its dynamic mmap threshold to 16 MiB here (as start-up frees do)
    directory = Path(sys.argv[1])
    pki = make_test_pki(directory)
    settings = HubSettings(mqtt_port=0, http_port=0, mqtts_port=0, db=str(directory / "hub.db"),
                           tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with EmbeddedHub(settings):
        before = libc.mallinfo2().hblks
        block = libc.malloc(4 << 20)  # beyond the heap's free top: its own mapping, or brk under 16 MiB
        mapped = libc.mallinfo2().hblks - before
        libc.free(block)
    print(mapped)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tls_listener_keeps_each_connections_read_buffer_a_fresh_mapping(tmp_path: Path) -> None:
    """uvloop gives every TLS connection a 256 KiB read buffer of which an idle device
    touches one page. Once glibc had raised its mmap threshold (any larger block freed,
    as the hub's start-up does), those buffers came from heap memory touched before:
    46-68 KB per TLS device instead of 27. A hub with a TLS listener pins the threshold."""
    try:
        import ctypes

        ctypes.CDLL(None).mallinfo2  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc >= 2.33 (no mallinfo2)")
    done = subprocess.run([sys.executable, "-c", _MMAP_PROBE, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1", done.stdout


def _fleet(port: int, hostname: str, key: str, prefix: str, count: int) -> subprocess.Popen[str]:
    """``count`` lean devices in another process (connect, subscribe, twin GET), so that the
    objects counted here are the hub's only."""
    cmd = [sys.executable, "-m", "bench._fleet_proc", "--mode", "hub", "--port", str(port), "--count", str(count),
           "--prefix", prefix, "--hostname", hostname, "--key", key, "--loop", "asyncio"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or "{}")  # type: ignore[union-attr]
    assert ready.get("connected") == count, ready
    return proc


#: The objects (tracked by the collector) one idle connected device costs on asyncio's loop,
#: and who holds them. Anything else growing with the devices fails the test below.
PER_CONNECTION = {
    # the hub's protocol object, its packet reader and packet inbox, the instance dicts
    "_Connection": 1, "PacketReader": 1, "deque": 1, "dict": 1, "list": 1,
    # the device's session and its set of subscriptions (hub/_sessions.py)
    "_Session": 1, "set": 1,
    # the token-expiry timer (IoT Hub closes at the SAS expiry): call_later's handle
    "TimerHandle": 1,
    # the keep-alive deadline heap entry (MqttServer._watch): (deadline, seq, weakref)
    "tuple": 2, "ReferenceType": 1,
    # asyncio's transport: socket wrappers, selector registration, reader handle, its bound
    # methods and contexts, the loop's weak transport map
    "_SelectorSocketTransport": 1, "socket": 1, "TransportSocket": 1, "SelectorKey": 1, "Handle": 1,
    "method": 3, "Context": 2, "KeyedRef": 1, "builtin_function_or_method": 1,
}


def test_a_connected_device_leaves_no_futures_tasks_or_buffers_behind(tmp_path: Path) -> None:
    """Count the objects the hub holds per connected device once CONNECT, SUBSCRIBE and a
    twin GET completed: no futures, tasks or batch leftovers, and a bounded number in all."""
    settings = HubSettings(mqtt_port=0, http_port=0, db=str(tmp_path / "hub.db"))
    key = "bGVhbmJlbmNoLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDE="
    auth = {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}
    count = 60
    with EmbeddedHub(settings) as running:
        svc = Service(running.base_url, running.connection_string())
        hub = running.hub
        for i in range(count):
            svc.create_device(f"warm-{i:05d}" if i < 5 else f"mem-{i - 5:05d}", authentication=auth)
        fleets = []
        try:
            fleets.append(_fleet(hub.mqtt_port, hub.settings.hostname, key, "warm", 5))  # lazily built caches
            gc.collect()
            before = Counter(type(o).__name__ for o in gc.get_objects())
            fleets.append(_fleet(hub.mqtt_port, hub.settings.hostname, key, "mem", count - 5))
            wait_until(lambda: all(not c._inbox and c._worker is None for c in list(hub.mqtt._connections)))
            gc.collect()
            after = Counter(type(o).__name__ for o in gc.get_objects())
            n = count - 5
            grown = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) >= n // 2}
            per_device = {k: round(v / n, 2) for k, v in grown.items()}
            assert not {k for k in grown if k in ("Future", "Task", "coroutine", "bytearray", "HMAC")}, per_device
            unexpected = {k: v for k, v in per_device.items() if v > PER_CONNECTION.get(k, 0) + 0.25}
            assert not unexpected, f"objects per connected device beyond PER_CONNECTION: {unexpected} (all: {per_device})"
        finally:
            for proc in fleets:
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait(30)
                proc.stdout.close()  # type: ignore[union-attr]
            svc.close()


def test_device_sockets_have_tcp_nodelay_without_the_hub_asking(tmp_path: Path) -> None:
    """The hub no longer sets TCP_NODELAY itself (uvloop kept a PseudoSocket per connection
    for it): the event loop sets it on every accepted TCP socket (Nagle + delayed ACK
    would add ~40-90 ms per request/response)."""
    import socket

    settings = HubSettings(mqtt_port=0, http_port=0, db=str(tmp_path / "hub.db"))
    with EmbeddedHub(settings) as running:
        hub = running.hub
        with socket.create_connection(("127.0.0.1", hub.mqtt_port)):
            wait_until(lambda: hub.mqtt.connection_count == 1)
            (conn,) = list(hub.mqtt._connections)
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
