"""MQTT fuzzing against a running hub: generated streams, mutated sessions, one good device.

Each stream is one TCP connection to the hub's MQTT port carrying bytes from one of:

* ``grammar``: packets drawn from the codec's packet grammar (any packet type, any field),
  sometimes with junk bytes spliced in, sent before any CONNECT;
* ``authed``: a valid CONNECT for a fuzz device, then grammar packets (exercises the
  handlers behind authentication: SUBSCRIBE/UNSUBSCRIBE filters, PUBLISH topics, QoS 2...);
* ``mutated``: a valid device session (CONNECT, SUBSCRIBE, twin GET, reported PATCH,
  telemetry, PINGREQ, UNSUBSCRIBE, DISCONNECT) with one mutation: truncation, a bad
  remaining length, bad UTF-8 in a string field, wrong fixed-header flags, packets out of
  order, a flood of one packet, or junk bytes.

Streams are sent in concurrent batches. After every batch the oracle checks: the hub logged
no unexpected error (a handler exception is a finding), the good device is still connected
and answers a direct method through the REST API, and the hub still answers ``/healthz``.
At the end every fuzz socket must be gone from the hub (no leaked connections).

``run_fuzz(hub, streams=N)`` is used by the pytest suite (a few thousand streams) and by
``./scripts/soak --fuzz-streams 100000`` (``python -m tests.reliability.mqtt_fuzz``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from iot_flows._sas import generate_sas_token
from iot_flows.mqtt import Connect, Disconnect, Pingreq, Publish, Subscribe, Unsubscribe, encode
from tests.mqtt.test_codec import packets as grammar_packets

__all__ = ["FuzzReport", "run_fuzz"]

BATCH = 200  # concurrent connections per batch (48 took ~2x as long per stream: per-batch read wait, oracle)
READ_TIMEOUT = 0.25
#: A marker encoded into string fields; replaced byte-for-byte by invalid UTF-8 (same length).
MARK = "\u00b5FUZZ\u00b5"
BAD_UTF8 = [b"\xc3(\xff\xfe\x80\x80", b"\xed\xa0\x80\xed\xbf\xbf", b"\x00\x00\x00\x00\x00\x00",
            b"\xf8\x88\x80\x80\x80\x80", b"\xc0\xaf\xc0\xaf\xc0\xaf", b"\xef\xbf\xbe\xef\xbf\xbf"]
#: Text the encoder accepts (MQTT strings may not contain U+0000); the bad bytes come from MARK.
_SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=4)
MUTATIONS = ("truncate", "bad_length", "bad_utf8", "wrong_flags", "reorder", "flood", "junk", "chunked")


@dataclass
class Target:
    host: str
    port: int
    hostname: str
    devices: list[tuple[str, str]]  # (device_id, SAS token)

    def connect_packet(self, index: int, **kw: Any) -> Connect:
        device_id, token = self.devices[index % len(self.devices)]
        fields: dict[str, Any] = {"client_id": device_id, "username": f"{self.hostname}/{device_id}/?api-version=2021-04-12",
                                  "password": token.encode(), "clean_session": False, "keep_alive": 60}
        fields.update(kw)
        return Connect(**fields)


@dataclass
class FuzzReport:
    streams: int = 0
    batches: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    closed_by_hub: int = 0
    bytes_sent: int = 0
    method_calls: int = 0
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    send_seconds: float = 0.0
    check_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"streams": self.streams, "batches": self.batches, "kinds": dict(self.kinds),
                "closed_by_hub": self.closed_by_hub, "bytes_sent": self.bytes_sent,
                "good_device_method_calls": self.method_calls, "findings": self.findings,
                "seconds": round(self.seconds, 1), "send_seconds": round(self.send_seconds, 1),
                "check_seconds": round(self.check_seconds, 1)}


# --------------------------------------------------------------------------- strategies


def _session(target: Target, index: int, mark: str = "") -> list[bytes]:
    device_id = target.devices[index % len(target.devices)][0]
    return [
        encode(target.connect_packet(index, client_id=device_id + mark) if mark == "cid" else target.connect_packet(index)),
        encode(Subscribe(1, (("$iothub/twin/res/#", 1), ("$iothub/methods/POST/#", 1),
                             (f"$iothub/twin/PATCH/properties/desired/{mark and MARK + '/'}#", 1)))),
        encode(Publish(f"$iothub/twin/GET/?$rid={mark and MARK}1", b" ", qos=1, packet_id=2)),
        encode(Publish("$iothub/twin/PATCH/properties/reported/?$rid=2", json.dumps({"fuzz": mark or 1}).encode(), qos=1,
                       packet_id=3)),
        encode(Publish(f"devices/{device_id}/messages/events/{mark and MARK}", b"telemetry", qos=0)),
        encode(Pingreq()),
        encode(Unsubscribe(4, (f"$iothub/methods/POST/{mark and MARK + '/'}#",))),
        encode(Disconnect()),
    ]


def _with_length(packet: bytes, length_bytes: bytes) -> bytes:
    """Replace the remaining-length varint of ``packet`` with ``length_bytes``."""
    pos = 1
    while packet[pos] & 0x80:
        pos += 1
    return packet[:1] + length_bytes + packet[pos + 1:]


@st.composite
def mutated_sessions(draw: st.DrawFn, target: Target) -> tuple[str, list[bytes]]:
    index = draw(st.integers(0, len(target.devices) - 1))
    kind = draw(st.sampled_from(MUTATIONS))
    session = _session(target, index, mark="x" if kind == "bad_utf8" else "")
    if kind == "truncate":
        wire = b"".join(session)
        return kind, [wire[: draw(st.integers(0, len(wire) - 1))]]
    if kind == "bad_length":
        i = draw(st.integers(0, len(session) - 1))
        length = draw(st.sampled_from([b"\xff\xff\xff\xff\x7f", b"\xff\xff\xff\x7f", b"\x80\x80\x80\x80", b"\x00",
                                       b"\x7f", b"\x80\x01", b"\xff\x7f"]) | st.binary(min_size=1, max_size=5))
        session[i] = _with_length(session[i], length)
        return kind, session[: i + 1 + draw(st.integers(0, len(session) - i - 1))]
    if kind == "bad_utf8":
        bad = draw(st.sampled_from(BAD_UTF8)) + b"ab"
        mark = MARK.encode()
        assert len(bad) == len(mark)
        i = draw(st.sampled_from([1, 2, 4, 6]))
        session[i] = session[i].replace(mark, bad)
        if draw(st.booleans()):  # a bad client id / username instead
            connect = encode(target.connect_packet(index, client_id=MARK + draw(_SAFE_TEXT), username=MARK))
            session[0] = connect.replace(mark, bad)
        return kind, session
    if kind == "wrong_flags":
        i = draw(st.integers(0, len(session) - 1))
        flip = draw(st.integers(1, 15))
        session[i] = bytes([session[i][0] ^ flip]) + session[i][1:]
        return kind, session
    if kind == "reorder":
        order = draw(st.permutations(range(len(session))))
        extra = draw(st.lists(st.sampled_from(range(len(session))), max_size=3))
        return kind, [session[i] for i in [*order, *extra]]
    if kind == "flood":
        which = draw(st.sampled_from([5, 2, 3, 4, 1, 0]))
        count = draw(st.integers(50, 3000 if which in (5, 4) else 300))
        return kind, [session[0], session[1], session[which] * count]
    if kind == "junk":
        wire = bytearray(b"".join(session))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(wire)))
            wire[at:at] = draw(st.binary(min_size=1, max_size=16))
        return kind, [bytes(wire)]
    # chunked: a valid session, delivered in arbitrary pieces
    wire = b"".join(session)
    cuts = sorted(draw(st.lists(st.integers(1, len(wire) - 1), max_size=8, unique=True)))
    return kind, [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]


def streams(target: Target) -> st.SearchStrategy[tuple[str, list[bytes]]]:
    grammar = st.builds(
        lambda ps, junk: ("grammar", [encode(p) for p in ps] + junk),
        st.lists(grammar_packets, min_size=1, max_size=4),
        st.lists(st.binary(min_size=1, max_size=32), max_size=1),
    )
    authed = st.builds(
        lambda i, ps: ("authed", [encode(target.connect_packet(i)), *(encode(p) for p in ps)]),
        st.integers(0, len(target.devices) - 1),
        st.lists(grammar_packets, min_size=1, max_size=4),
    )
    raw = st.builds(lambda b: ("raw", [b]), st.binary(min_size=1, max_size=64))
    return st.one_of(grammar, authed, mutated_sessions(target), raw)


# --------------------------------------------------------------------------- sending


async def _send_stream(host: str, port: int, chunks: list[bytes]) -> bool:
    """Send ``chunks``; True when the hub closed the connection (EOF or reset) by itself."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    closed = False
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        deadline = asyncio.get_running_loop().time() + READ_TIMEOUT
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            data = await asyncio.wait_for(reader.read(65536), remaining)
            if not data:
                closed = True
                break
    except (ConnectionError, OSError):
        closed = True
    except asyncio.TimeoutError:
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    return closed


async def _send_batch(host: str, port: int, batch: list[list[bytes]]) -> list[bool]:
    return await asyncio.gather(*(_send_stream(host, port, chunks) for chunks in batch))


# --------------------------------------------------------------------------- oracle


class _ErrorLog(logging.Handler):
    """Collects ERROR records from the hub's loggers: a handler exception is a finding."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}\n{self.format(record) if record.exc_info else ''}")


def run_fuzz(embedded: Any, service: Any, good: Any, *, streams_wanted: int, time_limit: float | None = None,
             fuzz_devices: list[tuple[str, str]], progress_every: int = 0, min_streams: int = 0,
             batch_size: int = BATCH) -> FuzzReport:
    """Fuzz ``embedded`` (an EmbeddedHub) with ``streams_wanted`` streams; return the report.

    ``service`` is a ``tests.support.Service``; ``good`` a connected ``tests.support.Device``
    serving methods; ``fuzz_devices`` are ``(device_id, primary_key)`` of registered devices
    the fuzzer may log in as. Stops early after ``time_limit`` seconds once at least
    ``min_streams`` ran (the report counts what ran).
    With ``progress_every`` > 0, prints a progress line to stderr every that many batches.
    ``batch_size`` streams run concurrently (each on its own connection) between checks.
    """
    hub = embedded.hub
    target = Target("127.0.0.1", hub.mqtt_port, hub.settings.hostname, [
        (d, generate_sas_token(f"{hub.settings.hostname}/devices/{d}", k, ttl=7 * 86400)) for d, k in fuzz_devices
    ])
    report = FuzzReport()
    errors = _ErrorLog()
    logging.getLogger("iot_flows").addHandler(errors)
    pending: list[tuple[str, list[bytes]]] = []
    start = time.monotonic()
    loop = asyncio.new_event_loop()

    def check(batch: list[tuple[str, list[bytes]]]) -> None:
        def where() -> str:
            return "; ".join(f"{k}:{b''.join(c)[:120]!r}" for k, c in batch[:8])

        if errors.records:
            report.findings.append(f"hub logged an error after batch {report.batches}: {errors.records[0]} streams: {where()}")
            errors.records.clear()
        if good.disconnected.is_set():
            report.findings.append(f"the good device was disconnected after batch {report.batches}: {where()}")
            assert good.connect() == 0
            good.subscribe_iothub()
        r = service.request("POST", f"/twins/{good.device_id}/methods",
                            json_body={"methodName": "ping", "payload": {"n": report.batches}, "responseTimeoutInSeconds": 10})
        report.method_calls += 1
        if r.status_code != 200 or r.json() != {"status": 200, "payload": {"pong": report.batches}}:
            report.findings.append(f"method call to the good device failed after batch {report.batches}: "
                                   f"{r.status_code} {r.text[:200]}; streams: {where()}")
        if service.http.get("/healthz").status_code != 200:
            report.findings.append(f"/healthz failed after batch {report.batches}")

    def flush() -> None:
        batch = pending[:]
        pending.clear()
        t0 = time.monotonic()
        results = loop.run_until_complete(_send_batch(target.host, target.port, [c for _, c in batch]))
        t1 = time.monotonic()
        report.send_seconds += t1 - t0
        report.batches += 1
        report.streams += len(batch)
        report.closed_by_hub += sum(results)
        for kind, chunks in batch:
            report.kinds[kind] += 1
            report.bytes_sent += sum(map(len, chunks))
        check(batch)
        report.check_seconds += time.monotonic() - t1
        if progress_every and report.batches % progress_every == 0:
            print(f"fuzz: {report.streams} streams, {len(report.findings)} findings, "
                  f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    out_of_time = False

    @settings(max_examples=streams_wanted, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(streams(target))
    def collect(stream: tuple[str, list[bytes]]) -> None:
        nonlocal out_of_time
        if out_of_time or report.streams + len(pending) >= streams_wanted:
            return
        pending.append(stream)
        if len(pending) >= batch_size:
            flush()
            if time_limit is not None and time.monotonic() - start > time_limit and report.streams >= min_streams:
                out_of_time = True

    try:
        collect()
        if pending:
            flush()
        # Every fuzz socket is closed on our side: the hub must drop them all.
        deadline = time.monotonic() + 15
        while hub.mqtt.connection_count > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        if hub.mqtt.connection_count != 1:
            report.findings.append(f"{hub.mqtt.connection_count - 1} fuzz connections still open on the hub")
    finally:
        logging.getLogger("iot_flows").removeHandler(errors)
        loop.close()
        report.seconds = time.monotonic() - start
    return report


def setup_devices(service: Any, embedded: Any, count: int = 16) -> tuple[Any, list[tuple[str, str]]]:
    """Register the good device (connected, answering ``ping``) and ``count`` fuzz devices."""
    from tests.support import Device

    hub = embedded.hub
    record = service.create_device()
    good = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, record["deviceId"],
                  record["authentication"]["symmetricKey"]["primaryKey"])
    assert good.connect() == 0
    good.subscribe_iothub()
    good.serve_methods(lambda name, payload: (200, {"pong": payload["n"]}))
    fuzz = []
    for _ in range(count):
        rec = service.create_device()
        fuzz.append((rec["deviceId"], rec["authentication"]["symmetricKey"]["primaryKey"]))
    return good, fuzz


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.reliability.mqtt_fuzz --streams N``: fuzz a fresh hub, print JSON."""
    from iot_flows.hub import HubSettings
    from iot_flows.hub._embedded import EmbeddedHub
    from tests.support import Service

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=BATCH,
                        help=f"streams sent concurrently between two oracle checks (default {BATCH})")
    parser.add_argument("--report", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # the fuzz client's own "send() raised" noise
    with tempfile.TemporaryDirectory() as tmp, EmbeddedHub(
        HubSettings(mqtt_port=0, http_port=0, db=str(Path(tmp) / "hub.db"))
    ) as embedded:
        service = Service(embedded.base_url, embedded.connection_string())
        good, fuzz = setup_devices(service, embedded)
        try:
            report = run_fuzz(embedded, service, good, streams_wanted=args.streams, fuzz_devices=fuzz, progress_every=50,
                              batch_size=args.batch)
        finally:
            good.disconnect()
            service.close()
    text = json.dumps(report.as_json(), indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
