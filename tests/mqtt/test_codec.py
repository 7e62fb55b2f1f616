"""Property-based and vector tests for the sans-IO MQTT 3.1.1 codec."""

from __future__ import annotations

import queue
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_flows.mqtt import (
    DEFAULT_MAX_PACKET_SIZE,
    SUBACK_FAILURE,
    Connack,
    Connect,
    Disconnect,
    MqttCodecError,
    Packet,
    PacketReader,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    decode_one,
    encode,
)
from iot_flows.mqtt import encode_puback, encode_publish
from iot_flows.mqtt._wire import _decode_remaining_length, _encode_remaining_length

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

_chars = st.characters(codec="utf-8", exclude_characters="\x00")
texts = st.text(_chars, max_size=20)
level_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#/"), max_size=8)
topic_names = st.lists(level_text, min_size=1, max_size=5).map("/".join).filter(bool)
topic_filters = st.builds(
    lambda levels, tail: "/".join(levels + tail),
    st.lists(st.one_of(level_text, st.just("+")), min_size=1, max_size=5),
    st.sampled_from([[], ["#"]]),
).filter(bool) | st.just("#")
packet_ids = st.integers(1, 0xFFFF)
qos_levels = st.integers(0, 2)
payloads = st.binary(max_size=300)


def tuples_of(elements: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(elements, min_size=1, max_size=5).map(tuple)


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=40)) if username is not None else None
    will = draw(st.booleans())
    name = draw(st.sampled_from(["MQTT", "MQIsdp"]) | texts)
    level = draw(st.sampled_from([4, 3]))
    return Connect(
        client_id=draw(texts),
        username=username,
        password=password,
        clean_session=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 0xFFFF)),
        will_topic=draw(topic_names) if will else None,
        will_payload=draw(st.binary(max_size=50)) if will else None,
        will_qos=draw(qos_levels) if will else 0,
        will_retain=draw(st.booleans()) if will else False,
        protocol_name=name,
        protocol_level=level,
    )


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(qos_levels)
    return Publish(
        topic=draw(topic_names),
        payload=draw(payloads),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
    )


packets: st.SearchStrategy[Packet] = st.one_of(
    connects(),
    st.builds(Connack, st.booleans(), st.integers(0, 5)),
    publishes(),
    *(st.builds(cls, packet_ids) for cls in (Puback, Pubrec, Pubrel, Pubcomp, Unsuback)),
    st.builds(Subscribe, packet_ids, tuples_of(st.tuples(topic_filters, qos_levels))),
    st.builds(Suback, packet_ids, tuples_of(st.sampled_from([0, 1, 2, SUBACK_FAILURE]))),
    st.builds(Unsubscribe, packet_ids, tuples_of(topic_filters)),
    st.just(Pingreq()),
    st.just(Pingresp()),
    st.just(Disconnect()),
)


def _feed_chunks(reader: PacketReader, data: bytes, cuts: list[int]) -> list[Packet]:
    out: list[Packet] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out += reader.feed(data[prev:cut])
        prev = cut
    return out


# --------------------------------------------------------------------------- round trips


@FAST
@given(packets)
def test_round_trip_single(packet: Packet) -> None:
    wire = encode(packet)
    reader = PacketReader()
    assert reader.feed(wire) == [packet]
    assert reader.buffered == 0
    assert decode_one(wire) == (packet, len(wire))
    assert decode_one(b"junk" + wire + b"\xc0", 4) == (packet, 4 + len(wire))
    assert decode_one(wire[:-1]) == (None, 0)


@FAST
@given(st.lists(packets, max_size=15), st.data())
def test_round_trip_stream_split_anywhere(stream: list[Packet], data: st.DataObject) -> None:
    wire = b"".join(encode(p) for p in stream)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    reader = PacketReader()
    assert _feed_chunks(reader, wire, cuts) == stream
    assert reader.buffered == 0


@FAST
@given(st.lists(packets, min_size=1, max_size=10))
def test_byte_at_a_time(stream: list[Packet]) -> None:
    wire = b"".join(encode(p) for p in stream)
    reader = PacketReader()
    assert _feed_chunks(reader, wire, list(range(len(wire)))) == stream


def test_feed_accepts_bytearray_and_memoryview() -> None:
    wire = encode(Publish("a", b"1")) + encode(Pingreq())
    for kind in (bytearray, memoryview):
        reader = PacketReader()
        assert reader.feed(kind(wire[:3])) == []
        assert reader.feed(kind(wire[3:])) == [Publish("a", b"1"), Pingreq()]


def test_large_publish_in_small_chunks() -> None:
    packet = Publish("devices/d1/messages/events/", bytes(range(256)) * 1000, qos=1, packet_id=7)
    wire = encode(packet) * 3
    reader = PacketReader()
    got = _feed_chunks(reader, wire, list(range(0, len(wire), 97)))
    assert got == [packet] * 3


def test_unsupported_protocol_decodes_header_only() -> None:
    """An MQTT 5 CONNECT (with properties) still yields name and level for CONNACK 1."""
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x05\x11\x00\x00\x00\x0a\x00\x00\x03abc"
    [packet] = PacketReader().feed(bytes((0x10, len(body))) + body)
    assert packet == Connect("", protocol_name="MQTT", protocol_level=5)
    for level in (0, 2, 5, 255):
        wire = encode(Connect("x", username="u", protocol_name="MQIsdp", protocol_level=level))
        assert decode_one(wire)[0] == Connect("", protocol_name="MQIsdp", protocol_level=level)
    # Levels 3 and 4 are parsed in full whatever the name; the server judges the name.
    full = Connect("x", username="u", protocol_name="MQIsdp", protocol_level=4)
    assert decode_one(encode(full))[0] == full


# --------------------------------------------------------------------------- fuzzing


def _check_stream(wire: bytes, cuts: list[int], max_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
    reader = PacketReader(max_packet_size=max_size)
    try:
        got = _feed_chunks(reader, wire, cuts)
    except MqttCodecError:
        with pytest.raises(MqttCodecError):  # a failed reader stays failed
            reader.feed(b"\xc0\x00")
        return
    # Whatever the decoder accepts must re-encode to something that decodes the same.
    again = PacketReader(max_packet_size=1 << 20).feed(b"".join(map(encode, got)))
    assert again == got


@FUZZ
@given(st.binary(max_size=200), st.data())
def test_fuzz_arbitrary_bytes(wire: bytes, data: st.DataObject) -> None:
    _check_stream(wire, [])
    _check_stream(wire, data.draw(st.lists(st.integers(0, len(wire)), max_size=6)), max_size=64)


@FUZZ
@given(st.lists(packets, min_size=1, max_size=4), st.data())
def test_fuzz_mutated_valid_streams(stream: list[Packet], data: st.DataObject) -> None:
    wire = bytearray(b"".join(encode(p) for p in stream))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        i = data.draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "set" and wire:
            wire[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            wire[i:i] = bytes([data.draw(st.integers(0, 255))])
        elif wire:
            del wire[i]
    _check_stream(bytes(wire), data.draw(st.lists(st.integers(0, len(wire)), max_size=4)))


@FUZZ
@given(st.binary(min_size=1, max_size=40))
def test_fuzz_decode_one(wire: bytes) -> None:
    try:
        packet, end = decode_one(wire)
    except MqttCodecError:
        return
    assert (packet is None and end == 0) or 0 < end <= len(wire)


# --------------------------------------------------------------------------- malformed input


def _frame(byte0: int, body: bytes) -> bytes:
    return bytes((byte0,)) + _encode_remaining_length(len(body)) + body


def _connect(flags_and_rest: bytes) -> bytes:
    """A CONNECT frame for MQTT 3.1.1; the argument starts at the connect-flags byte."""
    return _frame(0x10, b"\x00\x04MQTT\x04" + flags_and_rest)


MALFORMED = {
    "varint longer than 4 bytes": b"\x30\xff\xff\xff\xff\x01",
    "reserved type 0": b"\x00\x00",
    "reserved type 15": b"\xf0\x00",
    "connect flags": _frame(0x11, b"\x00\x04MQTT\x04\x02\x00\x00\x00\x00"),
    "connack flags": b"\x21\x02\x00\x00",
    "puback flags": b"\x42\x02\x00\x01",
    "pubrel flags 0": b"\x60\x02\x00\x01",
    "subscribe flags 0": _frame(0x80, b"\x00\x01\x00\x01a\x00"),
    "unsubscribe flags 0": _frame(0xA0, b"\x00\x01\x00\x01a"),
    "pingreq flags": b"\xc1\x00",
    "disconnect flags": b"\xe8\x00",
    "publish qos 3": _frame(0x36, b"\x00\x01a\x00\x01"),
    "publish qos 0 with dup": _frame(0x38, b"\x00\x01a"),
    "publish invalid utf-8": _frame(0x30, b"\x00\x02\xc3\x28"),
    "publish overlong utf-8": _frame(0x30, b"\x00\x02\xc0\xaf"),
    "publish utf-16 surrogate": _frame(0x30, b"\x00\x03\xed\xa0\x80"),
    "publish null char": _frame(0x30, b"\x00\x03a\x00b"),
    "publish wildcard +": _frame(0x30, b"\x00\x03a/+"),
    "publish wildcard #": _frame(0x30, b"\x00\x03a/#"),
    "publish empty topic": _frame(0x30, b"\x00\x00payload"),
    "publish packet id 0": _frame(0x32, b"\x00\x01a\x00\x00"),
    "publish truncated topic": _frame(0x30, b"\x00\x05ab"),
    "publish missing packet id": _frame(0x32, b"\x00\x01a\x00"),
    "puback packet id 0": b"\x40\x02\x00\x00",
    "puback trailing": b"\x40\x03\x00\x01\x00",
    "puback short": b"\x40\x01\x00",
    "pubrel packet id 0": b"\x62\x02\x00\x00",
    "unsuback packet id 0": b"\xb0\x02\x00\x00",
    "subscribe packet id 0": _frame(0x82, b"\x00\x00\x00\x01a\x00"),
    "subscribe no filters": _frame(0x82, b"\x00\x01"),
    "subscribe qos 3": _frame(0x82, b"\x00\x01\x00\x01a\x03"),
    "subscribe reserved qos bits": _frame(0x82, b"\x00\x01\x00\x01a\x40"),
    "subscribe missing qos": _frame(0x82, b"\x00\x01\x00\x01a"),
    "subscribe empty filter": _frame(0x82, b"\x00\x01\x00\x00\x00"),
    "subscribe # not last": _frame(0x82, b"\x00\x01\x00\x03#/a\x00"),
    "subscribe partial +": _frame(0x82, b"\x00\x01\x00\x03a+b\x00"),
    "unsubscribe no filters": _frame(0xA2, b"\x00\x01"),
    "unsubscribe bad filter": _frame(0xA2, b"\x00\x01\x00\x02a#"),
    "suback no codes": _frame(0x90, b"\x00\x01"),
    "suback bad code": _frame(0x90, b"\x00\x01\x03"),
    "connack bad ack flags": b"\x20\x02\x02\x00",
    "connack bad code": b"\x20\x02\x00\x06",
    "connack trailing": b"\x20\x03\x00\x00\x00",
    "pingreq trailing": b"\xc0\x01\x00",
    "disconnect trailing": b"\xe0\x01\x00",
    "connect reserved flag": _connect(b"\x03\x00\x3c\x00\x01c"),
    "connect will qos without will": _connect(b"\x0a\x00\x3c\x00\x01c"),
    "connect will retain without will": _connect(b"\x22\x00\x3c\x00\x01c"),
    "connect will qos 3": _connect(b"\x1e\x00\x3c\x00\x01c\x00\x01t\x00\x00"),
    "connect password without username": _connect(b"\x42\x00\x3c\x00\x01c\x00\x01p"),
    "connect username flag, no username": _connect(b"\x82\x00\x3c\x00\x01c"),
    "connect will flag, no will": _connect(b"\x06\x00\x3c\x00\x01c"),
    "connect will topic wildcard": _connect(b"\x06\x00\x3c\x00\x01c\x00\x01#\x00\x00"),
    "connect trailing bytes": _connect(b"\x02\x00\x3c\x00\x01cX"),
    "connect truncated header": _connect(b"\x02\x00"),
    "connect truncated protocol name": _frame(0x10, b"\x00\x04MQ"),
    "connect no protocol level": _frame(0x10, b"\x00\x04MQTT"),
    "connect bad utf-8 client id": _connect(b"\x02\x00\x3c\x00\x01\xff"),
    "connect empty body": b"\x10\x00",
    "connect will payload length missing": _connect(b"\x06\x00\x3c\x00\x01c\x00\x01t\x00"),
    "connect will payload truncated": _connect(b"\x06\x00\x3c\x00\x01c\x00\x01t\x00\x05ab"),
    "connect password truncated": _connect(b"\xc2\x00\x3c\x00\x01c\x00\x01u\x00\x03p"),
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed(wire: bytes) -> None:
    with pytest.raises(MqttCodecError):
        PacketReader().feed(wire)
    with pytest.raises(MqttCodecError):
        _feed_chunks(PacketReader(), wire, list(range(len(wire))))
    with pytest.raises(MqttCodecError):
        decode_one(wire)


def test_packet_too_large_is_rejected_at_header() -> None:
    reader = PacketReader(max_packet_size=100)
    assert reader.feed(_frame(0x30, b"\x00\x01a" + bytes(95))) != []  # 100 bytes: fits
    with pytest.raises(MqttCodecError, match="exceeds"):
        reader.feed(b"\x30\x63")  # header alone announces 101 bytes
    with pytest.raises(MqttCodecError):
        PacketReader().feed(b"\x30\xff\xff\xff\x7f")  # 256 MiB claim, default limit
    # Default limit: 256 KiB + 1 KiB per packet.
    fits = Publish("t", bytes(DEFAULT_MAX_PACKET_SIZE - 7))  # 1 + 3 (length) + 3 (topic)
    assert len(encode(fits)) == DEFAULT_MAX_PACKET_SIZE
    assert PacketReader().feed(encode(fits)) == [fits]
    with pytest.raises(MqttCodecError):
        PacketReader().feed(encode(Publish("t", bytes(DEFAULT_MAX_PACKET_SIZE - 6))))


def test_failed_reader_stays_failed() -> None:
    reader = PacketReader()
    assert reader.feed(b"\xc0") == []
    with pytest.raises(MqttCodecError):
        reader.feed(b"\x00\xf0\x00")
    with pytest.raises(MqttCodecError):
        reader.feed(b"\xc0\x00")


INVALID_TO_ENCODE = [
    Publish("a/+"),
    Publish("a/#"),
    Publish(""),
    Publish("a\x00"),
    Publish("\ud800"),
    Publish("a" * 0x10000),
    Publish("a", qos=3, packet_id=1),
    Publish("a", qos=1),
    Publish("a", qos=1, packet_id=0),
    Publish("a", qos=2, packet_id=0x10000),
    Publish("a", qos=0, packet_id=1),
    Publish("a", qos=0, dup=True),
    Puback(0),
    Pubrel(0),
    Unsuback(0x10000),
    Subscribe(1, ()),
    Subscribe(1, (("a/#/b", 0),)),
    Subscribe(1, (("a", 3),)),
    Subscribe(0, (("a", 0),)),
    Suback(1, ()),
    Suback(1, (3,)),
    Unsubscribe(1, ()),
    Unsubscribe(1, ("",)),
    Connack(False, 6),
    Connect("c", password=b"p"),
    Connect("c", will_topic="t"),
    Connect("c", will_qos=1),
    Connect("c", will_retain=True),
    Connect("c", will_topic="t/#", will_payload=b""),
    Connect("c", will_topic="t", will_payload=b"", will_qos=3),
    Connect("c", keep_alive=0x10000),
    Connect("c", password=b"x" * 0x10000, username="u"),
]


@pytest.mark.parametrize("packet", INVALID_TO_ENCODE, ids=repr)
def test_encode_rejects_invalid_packets(packet: Packet) -> None:
    with pytest.raises(MqttCodecError):
        encode(packet)


def test_encode_rejects_non_packets() -> None:
    with pytest.raises(TypeError):
        encode(b"\xc0\x00")  # type: ignore[arg-type]


def test_constructor_argument_validation() -> None:
    with pytest.raises(ValueError):
        PacketReader(max_packet_size=1)


# --------------------------------------------------------------------------- known vectors

REMAINING_LENGTHS = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    (2097151, b"\xff\xff\x7f"),
    (2097152, b"\x80\x80\x80\x01"),
    (268435455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("value", "wire"), REMAINING_LENGTHS)
def test_remaining_length_vectors(value: int, wire: bytes) -> None:
    assert _encode_remaining_length(value) == wire
    assert _decode_remaining_length(wire, 0, len(wire)) == (value, len(wire))
    assert _decode_remaining_length(wire[:-1], 0, len(wire) - 1) == (None, 0)
    if value:  # the fixed header alone is an incomplete packet, not an error
        assert decode_one(b"\x30" + wire, max_packet_size=300_000_000) == (None, 0)


@pytest.mark.parametrize("value", [-1, 268435456])
def test_remaining_length_out_of_range(value: int) -> None:
    with pytest.raises(MqttCodecError):
        _encode_remaining_length(value)


@pytest.mark.parametrize("size", [0, 127, 128, 16383, 16384, 2097151])
def test_remaining_length_in_real_packets(size: int) -> None:
    """A PINGREQ, then PUBLISH packets whose remaining length is exactly ``size``."""
    if size == 0:
        assert encode(Pingreq()) == b"\xc0\x00"
        return
    packet = Publish("t", bytes(size - 3))
    wire = encode(packet)
    rl = _encode_remaining_length(size)
    assert wire[: 1 + len(rl)] == b"\x30" + rl
    assert len(wire) == 1 + len(rl) + size
    assert PacketReader(max_packet_size=len(wire)).feed(wire) == [packet]


VECTORS: list[tuple[Packet, bytes]] = [
    (Pingreq(), b"\xc0\x00"),
    (Pingresp(), b"\xd0\x00"),
    (Disconnect(), b"\xe0\x00"),
    (Connack(False, 0), b"\x20\x02\x00\x00"),
    (Connack(True, 0), b"\x20\x02\x01\x00"),
    (Connack(False, 5), b"\x20\x02\x00\x05"),
    (Puback(1), b"\x40\x02\x00\x01"),
    (Pubrec(0x1234), b"\x50\x02\x12\x34"),
    (Pubrel(0xFFFF), b"\x62\x02\xff\xff"),
    (Pubcomp(2), b"\x70\x02\x00\x02"),
    (Unsuback(3), b"\xb0\x02\x00\x03"),
    (Suback(10, (0, 1, 2, 0x80)), b"\x90\x06\x00\x0a\x00\x01\x02\x80"),
    (Publish("a/b", b"hi"), b"\x30\x07\x00\x03a/bhi"),
    (
        Publish("a/b", b"hi", qos=1, retain=True, dup=True, packet_id=10),
        b"\x3b\x09\x00\x03a/b\x00\x0ahi",
    ),
    (Publish("é", b"", qos=2, packet_id=1), b"\x34\x06\x00\x02\xc3\xa9\x00\x01"),
    (Subscribe(1, (("a/+", 1), ("#", 0))), b"\x82\x0c\x00\x01\x00\x03a/+\x01\x00\x01#\x00"),
    (Unsubscribe(2, ("a/#",)), b"\xa2\x07\x00\x02\x00\x03a/#"),
    (
        Connect("dev1", username="hub/dev1", password=b"sas", keep_alive=60, clean_session=False),
        b"\x10\x1f\x00\x04MQTT\x04\xc0\x00\x3c\x00\x04dev1\x00\x08hub/dev1\x00\x03sas",
    ),
    (
        Connect("c", will_topic="w", will_payload=b"bye", will_qos=1, will_retain=True),
        b"\x10\x15\x00\x04MQTT\x04\x2e\x00\x00\x00\x01c\x00\x01w\x00\x03bye",
    ),
    (
        Connect("", protocol_name="MQIsdp", protocol_level=3),
        b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x00\x00\x00",
    ),
]


@pytest.mark.parametrize(("packet", "wire"), VECTORS, ids=[type(p).__name__ for p, _ in VECTORS])
def test_known_vectors(packet: Packet, wire: bytes) -> None:
    assert encode(packet) == wire
    assert PacketReader().feed(wire) == [packet]


def test_non_minimal_remaining_length_is_accepted() -> None:
    assert PacketReader().feed(b"\xc0\x80\x00") == [Pingreq()]


def test_decode_one_incomplete_and_offsets() -> None:
    assert decode_one(b"") == (None, 0)
    assert decode_one(b"\xc0\x00", 2) == (None, 2)
    assert decode_one(b"\x30") == (None, 0)
    assert decode_one(bytearray(b"\xc0\x00\xd0\x00"), 2) == (Pingresp(), 4)


C2D_TOPIC = "devices/dev1/messages/devicebound/x"


def test_paho_client_interop() -> None:
    """A real paho-mqtt client against a throwaway socket server built on the codec."""
    paho = pytest.importorskip("paho.mqtt.client")
    received: list[Packet] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            reader = PacketReader()
            while data := conn.recv(65536):
                for p in reader.feed(data):
                    received.append(p)
                    if isinstance(p, Connect):
                        conn.sendall(encode(Connack(False, 0)))
                    elif isinstance(p, Subscribe):
                        granted = tuple(qos for _, qos in p.topics)
                        reply = Publish(C2D_TOPIC, b"c2d", qos=1, packet_id=1)
                        conn.sendall(encode(Suback(p.packet_id, granted)) + encode(reply))
                    elif isinstance(p, Publish) and p.qos == 1:
                        conn.sendall(encode(Puback(p.packet_id)))  # type: ignore[arg-type]
                    elif isinstance(p, Publish) and p.qos == 2:
                        conn.sendall(encode(Pubrec(p.packet_id)))  # type: ignore[arg-type]
                    elif isinstance(p, Pubrel):
                        conn.sendall(encode(Pubcomp(p.packet_id)))
                    elif isinstance(p, Pingreq):
                        conn.sendall(encode(Pingresp()))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    messages: queue.Queue[object] = queue.Queue()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dev1", protocol=paho.MQTTv311)
    client.username_pw_set("hub/dev1", "sas-token")
    client.on_message = lambda _c, _u, msg: messages.put(msg)
    try:
        client.connect("127.0.0.1", server.getsockname()[1], keepalive=30)
        client.loop_start()
        client.subscribe("devices/dev1/messages/devicebound/#", qos=1)
        client.publish("devices/dev1/messages/events/", b"t1", qos=1).wait_for_publish(10)
        client.publish("devices/dev1/messages/events/", b"t2", qos=2).wait_for_publish(10)
        msg = messages.get(timeout=10)
        assert (msg.topic, msg.payload, msg.qos) == (C2D_TOPIC, b"c2d", 1)
        client.disconnect()
        thread.join(10)
    finally:
        client.loop_stop()
        server.close()
    assert received[0] == Connect(
        "dev1", username="hub/dev1", password=b"sas-token", clean_session=True, keep_alive=30
    )
    assert Subscribe(1, (("devices/dev1/messages/devicebound/#", 1),)) in received
    publishes = [(p.payload, p.qos) for p in received if isinstance(p, Publish)]
    assert publishes == [(b"t1", 1), (b"t2", 2)]
    assert Puback(1) in received
    assert any(isinstance(p, Pubrel) for p in received)
    assert received[-1] == Disconnect()


@given(topic_names, st.binary(max_size=70_000))
def test_encode_publish_is_encode_of_a_qos0_publish(topic: str, payload: bytes) -> None:
    assert encode_publish(topic, payload) == encode(Publish(topic=topic, payload=payload))


@pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "a\x00b", "\ud800", "x" * 70_000])
def test_encode_publish_refuses_what_encode_refuses(topic: str) -> None:
    with pytest.raises(MqttCodecError):
        encode(Publish(topic=topic, payload=b"x"))
    with pytest.raises(MqttCodecError):
        encode_publish(topic, b"x")


@given(st.integers(min_value=1, max_value=0xFFFF))
def test_encode_puback_is_encode_of_a_puback(packet_id: int) -> None:
    assert encode_puback(packet_id) == encode(Puback(packet_id))


@pytest.mark.parametrize("packet_id", [0, 0x10000])
def test_encode_puback_refuses_what_encode_refuses(packet_id: int) -> None:
    with pytest.raises(MqttCodecError):
        encode(Puback(packet_id))
    with pytest.raises(MqttCodecError):
        encode_puback(packet_id)
