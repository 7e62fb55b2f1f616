"""MQTT over WebSocket: ``wss://{HostName}:443/$iothub/websocket`` (docs/iothub-reference.md §2.1).

Azure's device SDKs reach IoT Hub through port 443 when 8883 is blocked: the Python SDK
with ``websockets=True`` (paho, ``ws_set_options(path="/$iothub/websocket")``), the Node
SDK's ``MqttWs``. The hub serves that path on its REST listener (HTTPS when TLS is on),
with the ``mqtt`` subprotocol, and feeds the WebSocket's binary frames to the same MQTT
connection handler as a TCP socket: one packet may span frames, one frame may hold many.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

if TYPE_CHECKING:
    from iot_flows.hub._hub import Hub

__all__ = ["WEBSOCKET_PATH", "mqtt_over_websocket"]

WEBSOCKET_PATH = "/$iothub/websocket"


class _WebSocketTransport(asyncio.Transport):
    """The part of ``asyncio.Transport`` the MQTT connection uses, over a WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        super().__init__()
        self._ws = websocket
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._outgoing.put_nowait(bytes(data))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._outgoing.put_nowait(None)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername" and self._ws.client is not None:
            return (self._ws.client.host, self._ws.client.port)
        return default

    async def pump(self) -> None:
        """Send queued packets in order until closed, then close the WebSocket."""
        while (data := await self._outgoing.get()) is not None:
            await self._ws.send_bytes(data)
        with contextlib.suppress(Exception):
            await self._ws.close()


async def mqtt_over_websocket(websocket: WebSocket) -> None:
    """Starlette endpoint: accept (subprotocol ``mqtt``) and run one MQTT connection."""
    hub: Hub = websocket.app.state.hub
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="mqtt" if "mqtt" in offered else None)
    transport = _WebSocketTransport(websocket)
    connection = hub.mqtt.protocol_factory()
    connection.connection_made(transport)
    sender = asyncio.create_task(transport.pump(), name="mqtt-ws-send")
    try:
        while not transport.is_closing():
            receiver = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if receiver not in done:  # the hub closed the connection
                receiver.cancel()
                break
            message = receiver.result()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes") or (message.get("text") or "").encode()
            if data:
                connection.data_received(data)
    except WebSocketDisconnect:
        pass
    finally:
        connection.connection_lost(None)
        transport.close()
        with contextlib.suppress(Exception):
            await sender
