"""Sans-IO MQTT 3.1.1 wire codec: bytes in, packets out (and back).

No sockets, no asyncio: the hub's connection handler owns the transport and calls
:meth:`PacketReader.feed` with whatever TCP delivered, then :func:`encode` for replies.

Decoding is strict, because a hub facing thousands of devices must not let one broken
client corrupt its state: every malformed input (MQTT 3.1.1 §1.5, §2, §3) raises
:class:`MqttCodecError` and nothing else, and the caller closes the connection. The
fixed header is checked as soon as its bytes arrive, so an oversized or garbage packet
is rejected before its body is buffered. Encoding applies the same rules, so anything
:func:`encode` produces decodes back to an equal packet.

Hot path: PUBLISH is decoded from a ``memoryview`` with one copy for the topic and one
for the payload; :class:`PacketReader` parses straight from the caller's bytes when it
holds no leftover, and otherwise appends to one ``bytearray`` and trims it once per feed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
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
)

__all__ = ["DEFAULT_MAX_PACKET_SIZE", "MqttCodecError", "PacketReader", "decode_one", "encode"]

#: Largest whole packet (fixed header included) accepted by default: IoT Hub's 256 KiB
#: message limit plus room for the topic and headers.
DEFAULT_MAX_PACKET_SIZE = 256 * 1024 + 1024

#: Largest value the 4-byte remaining-length varint can carry (MQTT 3.1.1 §2.2.3).
MAX_REMAINING_LENGTH = 268_435_455

_Buffer = bytes | bytearray | memoryview


class MqttCodecError(ValueError):
    """Malformed MQTT data (or an unencodable packet); the connection must be closed."""


# --------------------------------------------------------------------------- helpers

_RL1 = tuple(bytes((n,)) for n in range(128))  # one-byte remaining lengths, precomputed


def _encode_remaining_length(n: int) -> bytes:
    """The MQTT 3.1.1 §2.2.3 varint: 7 bits per byte, least significant first, high bit = 'more'."""
    if 0 <= n < 128:
        return _RL1[n]
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise MqttCodecError(f"remaining length {n} out of range")
    out = bytearray()
    while n:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
    return bytes(out)


def _decode_remaining_length(mv: _Buffer, pos: int, end: int) -> tuple[int | None, int]:
    """Parse the varint at ``pos``: ``(value, next_pos)``, or ``(None, pos)`` if incomplete."""
    value = shift = 0
    start = pos
    while pos < end:
        byte = mv[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift == 28:
            raise MqttCodecError("remaining length longer than 4 bytes")
    return None, start


def _str(mv: memoryview, pos: int, end: int) -> tuple[str, int]:
    """An MQTT 3.1.1 §1.5.3 UTF-8 string (2-byte big-endian length prefix); U+0000 is malformed."""
    stop = pos + 2
    if stop > end:
        raise MqttCodecError("truncated string length")
    stop += (mv[pos] << 8) | mv[pos + 1]
    if stop > end:
        raise MqttCodecError("truncated string")
    try:
        text = str(mv[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError:
        raise MqttCodecError("invalid UTF-8 string") from None
    if "\x00" in text:
        raise MqttCodecError("string contains U+0000")
    return text, stop


def _bin(mv: memoryview, pos: int, end: int) -> tuple[bytes, int]:
    """Length-prefixed binary data (will payload, password)."""
    stop = pos + 2
    if stop > end:
        raise MqttCodecError("truncated binary length")
    stop += (mv[pos] << 8) | mv[pos + 1]
    if stop > end:
        raise MqttCodecError("truncated binary data")
    return mv[pos + 2 : stop].tobytes(), stop


def _packet_id(mv: memoryview, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise MqttCodecError("truncated packet identifier")
    pid = (mv[pos] << 8) | mv[pos + 1]
    if not pid:
        raise MqttCodecError("packet identifier 0")
    return pid


def _check_topic(topic: str) -> None:
    """Topic *names* (PUBLISH, will) are non-empty and carry no wildcards (MQTT 3.1.1 §4.7)."""
    if not topic or "+" in topic or "#" in topic:
        raise MqttCodecError(f"invalid topic name {topic!r}")


def _check_filter(topic_filter: str) -> None:
    """Topic filters: non-empty; ``+`` fills a whole level, ``#`` only as the last level."""
    if not topic_filter:
        raise MqttCodecError("empty topic filter")
    if "+" in topic_filter or "#" in topic_filter:
        levels = topic_filter.split("/")
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if level == "+" or (level == "#" and i == last):
                continue
            if "+" in level or "#" in level:
                raise MqttCodecError(f"invalid topic filter {topic_filter!r}")


# --------------------------------------------------------------------------- decoding

def _d_connect(mv: memoryview, flags: int, pos: int, end: int) -> Connect:
    name, pos = _str(mv, pos, end)
    if pos >= end:
        raise MqttCodecError("truncated CONNECT protocol level")
    level = mv[pos]
    if level != 4 and level != 3:  # not 3.1.1 or 3.1: the rest may differ (MQTT 5 properties)
        return Connect("", protocol_name=name, protocol_level=level)
    if pos + 4 > end:
        raise MqttCodecError("truncated CONNECT header")
    cflags = mv[pos + 1]
    keep_alive = (mv[pos + 2] << 8) | mv[pos + 3]
    pos += 4
    will, will_qos, will_retain = cflags & 0x04, (cflags >> 3) & 3, bool(cflags & 0x20)
    has_user, has_password = cflags & 0x80, cflags & 0x40
    if cflags & 0x01:
        raise MqttCodecError("CONNECT reserved flag set")
    if will_qos == 3 or (not will and (will_qos or will_retain)):
        raise MqttCodecError("inconsistent CONNECT will flags")
    if has_password and not has_user:
        raise MqttCodecError("CONNECT password flag without username flag")
    client_id, pos = _str(mv, pos, end)
    will_topic = will_payload = username = password = None
    if will:
        will_topic, pos = _str(mv, pos, end)
        _check_topic(will_topic)
        will_payload, pos = _bin(mv, pos, end)
    if has_user:
        username, pos = _str(mv, pos, end)
    if has_password:
        password, pos = _bin(mv, pos, end)
    if pos != end:
        raise MqttCodecError("trailing bytes in CONNECT")
    return Connect(
        client_id, username, password, bool(cflags & 0x02), keep_alive,
        will_topic, will_payload, will_qos, will_retain, name, level,
    )


def _d_connack(mv: memoryview, flags: int, pos: int, end: int) -> Connack:
    if end - pos != 2:
        raise MqttCodecError("CONNACK must have remaining length 2")
    ack_flags, code = mv[pos], mv[pos + 1]
    if ack_flags & 0xFE or code > 5:
        raise MqttCodecError("invalid CONNACK flags or return code")
    return Connack(bool(ack_flags), code)


def _d_publish(mv: memoryview, flags: int, pos: int, end: int) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MqttCodecError("PUBLISH with QoS 3")
    if flags & 0x08 and not qos:
        raise MqttCodecError("PUBLISH QoS 0 with DUP set")
    topic, pos = _str(mv, pos, end)
    if not topic or "+" in topic or "#" in topic:  # _check_topic, inlined on the hot path
        raise MqttCodecError(f"invalid topic name {topic!r}")
    packet_id = None
    if qos:
        packet_id = _packet_id(mv, pos, end)
        pos += 2
    return Publish(topic, mv[pos:end].tobytes(), qos, bool(flags & 1), bool(flags & 8), packet_id)


def _id_only(cls: type[Puback | Pubrec | Pubrel | Pubcomp | Unsuback]) -> Callable[..., Packet]:
    def decode(mv: memoryview, flags: int, pos: int, end: int) -> Packet:
        if end - pos != 2:
            raise MqttCodecError(f"{cls.__name__.upper()} must have remaining length 2")
        return cls(_packet_id(mv, pos, end))

    return decode


def _d_subscribe(mv: memoryview, flags: int, pos: int, end: int) -> Subscribe:
    packet_id = _packet_id(mv, pos, end)
    pos += 2
    topics = []
    while pos < end:
        topic_filter, pos = _str(mv, pos, end)
        _check_filter(topic_filter)
        if pos >= end:
            raise MqttCodecError("SUBSCRIBE filter without requested QoS")
        qos = mv[pos]
        pos += 1
        if qos > 2:
            raise MqttCodecError("SUBSCRIBE requested QoS must be 0, 1 or 2")
        topics.append((topic_filter, qos))
    if not topics:
        raise MqttCodecError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, tuple(topics))


_SUBACK_CODES = frozenset({0, 1, 2, 0x80})


def _d_suback(mv: memoryview, flags: int, pos: int, end: int) -> Suback:
    packet_id = _packet_id(mv, pos, end)
    codes = tuple(mv[pos + 2 : end])
    if not codes or not _SUBACK_CODES.issuperset(codes):
        raise MqttCodecError("SUBACK needs return codes among 0, 1, 2, 0x80")
    return Suback(packet_id, codes)


def _d_unsubscribe(mv: memoryview, flags: int, pos: int, end: int) -> Unsubscribe:
    packet_id = _packet_id(mv, pos, end)
    pos += 2
    filters = []
    while pos < end:
        topic_filter, pos = _str(mv, pos, end)
        _check_filter(topic_filter)
        filters.append(topic_filter)
    if not filters:
        raise MqttCodecError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, tuple(filters))


def _empty(instance: Packet) -> Callable[..., Packet]:
    def decode(mv: memoryview, flags: int, pos: int, end: int) -> Packet:
        if end != pos:
            raise MqttCodecError(f"{type(instance).__name__.upper()} must be empty")
        return instance

    return decode


# Indexed by packet type (high nibble of byte 0): decoder and required flags (MQTT 3.1.1 §2.2.2).
# Types 0 and 15 are reserved; PUBLISH flags (None) are checked by its decoder.
_DECODERS: tuple[Callable[[memoryview, int, int, int], Packet] | None, ...] = (
    None, _d_connect, _d_connack, _d_publish, _id_only(Puback), _id_only(Pubrec),
    _id_only(Pubrel), _id_only(Pubcomp), _d_subscribe, _d_suback, _d_unsubscribe,
    _id_only(Unsuback), _empty(Pingreq()), _empty(Pingresp()), _empty(Disconnect()), None,
)
_FLAGS = (None, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, None)


def _decode(mv: memoryview, off: int, end: int, max_size: int) -> tuple[Packet | None, int]:
    if off >= end:
        return None, off
    byte0 = mv[off]
    ptype, flags = byte0 >> 4, byte0 & 0x0F
    decoder = _DECODERS[ptype]
    if decoder is None:
        raise MqttCodecError(f"reserved packet type {ptype}")
    if ptype != 3 and flags != _FLAGS[ptype]:
        raise MqttCodecError(f"invalid fixed-header flags {flags:#06b} for packet type {ptype}")
    if off + 1 < end and mv[off + 1] < 0x80:  # fast path: one-byte remaining length
        length, pos = mv[off + 1], off + 2
    else:
        decoded, pos = _decode_remaining_length(mv, off + 1, end)
        if decoded is None:
            return None, off
        length = decoded
    stop = pos + length
    if stop - off > max_size:
        raise MqttCodecError(f"packet of {stop - off} bytes exceeds limit of {max_size}")
    if stop > end:
        return None, off
    return decoder(mv, flags, pos, stop), stop


def decode_one(
    buf: _Buffer, offset: int = 0, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
) -> tuple[Packet | None, int]:
    """Decode one packet starting at ``buf[offset]``.

    Returns ``(packet, offset_after_it)``, or ``(None, offset)`` when ``buf`` does not yet
    hold the whole packet. Raises :class:`MqttCodecError` on malformed data.
    """
    if offset < 0:
        raise ValueError("offset must not be negative")
    with memoryview(buf) as mv:
        return _decode(mv, offset, len(mv), max_packet_size)


class PacketReader:
    """Incremental decoder for one connection's byte stream.

    :meth:`feed` accepts any split of the stream and returns the packets it completes.
    After an :class:`MqttCodecError` the stream is unusable (framing is lost), so every
    later call raises again; packets decoded earlier in the failing call are dropped.
    """

    __slots__ = ("_buf", "_failed", "max_packet_size")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        if max_packet_size < 2:
            raise ValueError("max_packet_size must be at least 2")
        self.max_packet_size = max_packet_size
        self._buf = bytearray()
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held back as the start of an incomplete packet."""
        return len(self._buf)

    def feed(self, data: _Buffer) -> list[Packet]:
        """Add ``data`` to the stream; return every packet now complete, in order."""
        if self._failed:
            raise MqttCodecError("stream already failed to decode")
        buf: _Buffer = data
        if self._buf:
            self._buf += data
            buf = self._buf
        packets: list[Packet] = []
        off = 0
        try:
            with memoryview(buf) as mv:
                end = len(mv)
                while off < end:
                    packet, off_after = _decode(mv, off, end, self.max_packet_size)
                    if packet is None:
                        break
                    packets.append(packet)
                    off = off_after
        except Exception:
            self._failed = True
            raise
        if buf is self._buf:
            del self._buf[:off]
        elif off < len(data):
            self._buf += memoryview(data)[off:]
        return packets


# --------------------------------------------------------------------------- encoding


def _enc_str(text: str, what: str = "string") -> bytes:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise MqttCodecError(f"{what} is not valid Unicode") from None
    if len(raw) > 0xFFFF or "\x00" in text:
        raise MqttCodecError(f"{what} too long or contains U+0000")
    return len(raw).to_bytes(2, "big") + raw


def _enc_bin(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise MqttCodecError("binary field longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _enc_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise MqttCodecError(f"invalid packet identifier {packet_id!r}")
    return packet_id.to_bytes(2, "big")


def _frame(byte0: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return b"".join((bytes((byte0,)), _encode_remaining_length(len(body)), body))


def _e_connect(p: Connect) -> bytes:
    if not 0 <= p.keep_alive <= 0xFFFF or not 0 <= p.protocol_level <= 0xFF:
        raise MqttCodecError("CONNECT keep_alive or protocol_level out of range")
    will = p.will_topic is not None
    if will != (p.will_payload is not None) or p.will_qos not in (0, 1, 2):
        raise MqttCodecError("CONNECT will_topic and will_payload go together; will_qos 0..2")
    if not will and (p.will_qos or p.will_retain):
        raise MqttCodecError("CONNECT will_qos/will_retain need a will")
    if p.password is not None and p.username is None:
        raise MqttCodecError("CONNECT password needs a username")
    flags = (
        (p.username is not None) << 7 | (p.password is not None) << 6 | bool(p.will_retain) << 5
        | p.will_qos << 3 | will << 2 | bool(p.clean_session) << 1
    )
    parts = [_enc_str(p.protocol_name), bytes((p.protocol_level, flags)),
             p.keep_alive.to_bytes(2, "big"), _enc_str(p.client_id)]
    if p.will_topic is not None and p.will_payload is not None:
        _check_topic(p.will_topic)
        parts += (_enc_str(p.will_topic), _enc_bin(p.will_payload))
    if p.username is not None:
        parts.append(_enc_str(p.username))
    if p.password is not None:
        parts.append(_enc_bin(p.password))
    return _frame(0x10, *parts)


def _e_connack(p: Connack) -> bytes:
    if not 0 <= p.return_code <= 5:
        raise MqttCodecError(f"invalid CONNACK return code {p.return_code}")
    return bytes((0x20, 2, bool(p.session_present), p.return_code))


def _e_publish(p: Publish) -> bytes:
    qos, topic = p.qos, p.topic
    if not topic or "+" in topic or "#" in topic:  # _check_topic, inlined on the hot path
        raise MqttCodecError(f"invalid topic name {topic!r}")
    if qos == 0:
        if p.packet_id is not None or p.dup:
            raise MqttCodecError("QoS 0 PUBLISH takes no packet_id and no dup")
        variable = _enc_str(topic, "topic")
    elif qos == 1 or qos == 2:
        variable = _enc_str(topic, "topic") + _enc_id(p.packet_id)
    else:
        raise MqttCodecError(f"invalid PUBLISH QoS {qos!r}")
    byte0 = 0x30 | bool(p.dup) << 3 | qos << 1 | bool(p.retain)
    payload = p.payload
    length = _encode_remaining_length(len(variable) + len(payload))
    return b"".join((bytes((byte0,)), length, variable, payload))


def _e_subscribe(p: Subscribe) -> bytes:
    if not p.topics:
        raise MqttCodecError("SUBSCRIBE needs at least one topic filter")
    parts = [_enc_id(p.packet_id)]
    for topic_filter, qos in p.topics:
        _check_filter(topic_filter)
        if qos not in (0, 1, 2):
            raise MqttCodecError(f"invalid requested QoS {qos!r}")
        parts += (_enc_str(topic_filter, "topic filter"), bytes((qos,)))
    return _frame(0x82, *parts)


def _e_suback(p: Suback) -> bytes:
    if not p.return_codes or not _SUBACK_CODES.issuperset(p.return_codes):
        raise MqttCodecError("SUBACK needs return codes among 0, 1, 2, 0x80")
    return _frame(0x90, _enc_id(p.packet_id), bytes(p.return_codes))


def _e_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.filters:
        raise MqttCodecError("UNSUBSCRIBE needs at least one topic filter")
    for topic_filter in p.filters:
        _check_filter(topic_filter)
    return _frame(0xA2, _enc_id(p.packet_id), *(_enc_str(f, "topic filter") for f in p.filters))


def _e_id_only(byte0: int) -> Callable[[Puback | Pubrec | Pubrel | Pubcomp | Unsuback], bytes]:
    prefix = bytes((byte0, 2))
    return lambda p: prefix + _enc_id(p.packet_id)


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    Connect: _e_connect,
    Connack: _e_connack,
    Publish: _e_publish,
    Puback: _e_id_only(0x40),
    Pubrec: _e_id_only(0x50),
    Pubrel: _e_id_only(0x62),
    Pubcomp: _e_id_only(0x70),
    Subscribe: _e_subscribe,
    Suback: _e_suback,
    Unsubscribe: _e_unsubscribe,
    Unsuback: _e_id_only(0xB0),
    Pingreq: lambda p: b"\xc0\x00",
    Pingresp: lambda p: b"\xd0\x00",
    Disconnect: lambda p: b"\xe0\x00",
}


def encode(packet: Packet) -> bytes:
    """Serialize ``packet``; raises :class:`MqttCodecError` if it breaks a protocol rule."""
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError(f"not an MQTT packet: {packet!r}") from None
    return encoder(packet)
