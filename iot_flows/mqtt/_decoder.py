"""MQTT 3.1.1 decoding: bytes in, packets out (see :mod:`iot_flows.mqtt._codec`).

Every malformed input raises :class:`MqttCodecError` and nothing else. The fixed header
is checked as soon as its bytes arrive, so an oversized or garbage packet is rejected
before its body is buffered. PUBLISH is decoded from a ``memoryview`` with one copy for
the topic and one for the payload; :class:`PacketReader` parses straight from the
caller's bytes when it holds no leftover, and otherwise appends to one ``bytearray`` and
trims it once per feed.
"""

from __future__ import annotations

from collections.abc import Callable

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
from ._wire import (
    _SUBACK_CODES,
    DEFAULT_MAX_PACKET_SIZE,
    MqttCodecError,
    _Buffer,
    _check_filter,
    _check_topic,
    _decode_remaining_length,
)

__all__ = ["PacketReader", "decode_one"]


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

