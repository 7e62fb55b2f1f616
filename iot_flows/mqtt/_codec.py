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

The codec is split by direction: :mod:`iot_flows.mqtt._wire` (limits, the error type,
the remaining-length varint, topic rules), :mod:`iot_flows.mqtt._decoder` (bytes to
packets) and :mod:`iot_flows.mqtt._encoder` (packets to bytes); this module is their
one public face.
"""

from __future__ import annotations

from ._decoder import PacketReader, decode_one
from ._encoder import encode, encode_puback, encode_publish
from ._wire import DEFAULT_MAX_PACKET_SIZE, MqttCodecError

__all__ = ["DEFAULT_MAX_PACKET_SIZE", "MqttCodecError", "PacketReader", "decode_one", "encode", "encode_puback", "encode_publish"]
