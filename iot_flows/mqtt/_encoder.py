"""MQTT 3.1.1 encoding: packets out as bytes (see :mod:`iot_flows.mqtt._codec`).

Encoding applies the decoder's rules, so anything :func:`encode` produces decodes back
to an equal packet; a packet that breaks a rule raises :class:`MqttCodecError`.
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
from ._wire import _SUBACK_CODES, MqttCodecError, _check_filter, _check_topic, _encode_remaining_length

__all__ = ["encode", "encode_publish"]


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


def encode_publish(topic: str, payload: bytes) -> bytes:
    """``encode(Publish(topic, payload))`` (QoS 0, no retain) without building the packet.

    The hub's hot path (a method request per device in a job); same rules and bytes.
    """
    if not topic or "+" in topic or "#" in topic:
        raise MqttCodecError(f"invalid topic name {topic!r}")
    variable = _enc_str(topic, "topic")
    return b"".join((b"\x30", _encode_remaining_length(len(variable) + len(payload)), variable, payload))


def encode_puback(packet_id: int) -> bytes:
    """``encode(Puback(packet_id))`` without building the packet (the hub answers every
    QoS 1 publish with one); same rules and bytes."""
    return b"\x40\x02" + _enc_id(packet_id)


def encode(packet: Packet) -> bytes:
    """Serialize ``packet``; raises :class:`MqttCodecError` if it breaks a protocol rule."""
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError(f"not an MQTT packet: {packet!r}") from None
    return encoder(packet)
