"""MQTT 3.1.1 wire primitives shared by the decoder and the encoder.

The packet-size limit, :class:`MqttCodecError`, the remaining-length varint (MQTT 3.1.1
§2.2.3) and the topic name / topic filter rules (MQTT 3.1.1 §4.7) that both directions
of :mod:`iot_flows.mqtt._codec` apply.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_PACKET_SIZE", "MAX_REMAINING_LENGTH", "MqttCodecError"]

#: Largest whole packet (fixed header included) accepted by default: IoT Hub's 256 KiB
#: message limit plus room for the topic and headers.
DEFAULT_MAX_PACKET_SIZE = 256 * 1024 + 1024

#: Largest value the 4-byte remaining-length varint can carry (MQTT 3.1.1 §2.2.3).
MAX_REMAINING_LENGTH = 268_435_455

_Buffer = bytes | bytearray | memoryview


class MqttCodecError(ValueError):
    """Malformed MQTT data (or an unencodable packet); the connection must be closed."""


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


#: Valid SUBACK return codes (MQTT 3.1.1 §3.9.3): granted QoS 0, 1, 2 or failure.
_SUBACK_CODES = frozenset({0, 1, 2, 0x80})
