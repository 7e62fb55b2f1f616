"""Cross-node device traffic: direct methods (request/reply) and desired-property pushes.

Direct methods follow IoT Hub's contract on every node (docs/iothub-reference.md §5): the request goes
to the node that holds the device as a NATS request whose timeout covers the method's
``connectTimeoutInSeconds`` + ``responseTimeoutInSeconds``; that node invokes it locally
and answers with the device's status and payload, or with the IoT Hub error. 404103 when
no live node holds the device (within ``connectTimeoutInSeconds``), 503 when NATS is down.

Desired notifications are published once, by the node that committed the change, to the
node that holds the device; that node delivers each ``$version`` at most once and in
order (a notification that overtakes an earlier one waits briefly for it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from iot_flows._exceptions import (
    DeviceNotOnlineError,
    GatewayTimeoutError,
    HubError,
    ServiceUnavailableError,
    error_for_status,
)
from iot_flows._types import MethodResult
from iot_flows.hub import Subscription, parse_method_call
from iot_flows.hub.cluster._bus import Bus, BusUnavailableError, NoResponderError
from iot_flows.store import ClusterStore

if TYPE_CHECKING:
    from iot_flows.hub import Hub

__all__ = ["DesiredRelay", "MethodRouter", "call_body", "decode_outcome", "invoke_here"]

log = logging.getLogger(__name__)
_POLL = 0.25  #: seconds between presence checks while waiting for a device to connect
_REORDER_WAIT = 0.3  #: seconds a desired notification waits for an earlier $version
_BUS_MARGIN = 5.0  #: seconds a method request may take on the bus beyond the method's timeouts
_MAX_HOPS = 2  #: a call goes to the node holding the device, and once more if the device moved on


def _not_online(connect_timeout: int) -> DeviceNotOnlineError:
    if not connect_timeout:
        return DeviceNotOnlineError("Device is not online.")
    hms = f"{connect_timeout // 3600:02d}:{connect_timeout % 3600 // 60:02d}:{connect_timeout % 60:02d}"
    return DeviceNotOnlineError("Timed out waiting for device to connect.", info={"timeout": hms})


def call_body(device_id: str, call: Any) -> dict[str, Any]:
    """A method call as it travels on the bus (the REST body plus ``deviceId``)."""
    return {
        "deviceId": device_id,
        "methodName": call.method_name,
        "payload": call.payload,
        "responseTimeoutInSeconds": call.response_timeout,
        "connectTimeoutInSeconds": call.connect_timeout,
    }


async def invoke_here(hub: Hub, request: dict[str, Any], router: MethodRouter | None = None) -> dict[str, Any]:
    """Invoke a bus-borne call on this node's device; the reply: status and payload, or the IoT Hub error.

    With ``router``: a device not subscribed here may be reconnecting to another node; the
    call then waits for it anywhere (within its ``connectTimeoutInSeconds``) and goes on to
    the node it connects to, at most once more (``hops``).
    """
    try:
        call = parse_method_call(request)
        device_id, hops = request["deviceId"], int(request.get("hops", 1))
        if router is not None and hops < _MAX_HOPS and hub.sessions.subscribed_link(device_id, Subscription.METHODS) is None:
            result = await router.invoke(device_id, call, hops=hops)
        else:
            result = await hub.methods.invoke_local(device_id, call)
        return {"status": result.status, "payload": result.payload}
    except HubError as exc:
        return {"error": {"status": exc.status_code, "code": exc.error_code, "name": exc.error_name,
                          "message": exc.message, "info": exc.info}}  # fmt: skip


def decode_outcome(reply: dict[str, Any]) -> MethodResult:
    """The :class:`MethodResult` of an :func:`invoke_here` reply; raises the IoT Hub error it carries."""
    error = reply.get("error")
    if error is not None:
        raise error_for_status(
            int(error["status"]), error.get("message", ""), error.get("code"), error.get("name"),
            info=error.get("info") or {},
        )  # fmt: skip
    return MethodResult(status=int(reply["status"]), payload=reply.get("payload"))


class MethodRouter:
    """Invokes a direct method wherever the device is connected."""

    def __init__(self, hub: Hub, store: ClusterStore, bus: Bus, presence: Any = None) -> None:
        self._hub = hub
        self._store = store
        self._bus = bus
        #: ``holder(device_id)`` (a PresenceLookup coalescing concurrent look-ups), else the store's
        self._holder = presence.holder if presence is not None else store.holder

    async def start(self) -> None:
        """Serve method calls routed to this node and route the hub's calls for remote devices."""
        await self._bus.subscribe(self._bus.subject("node", self._store.node_id, "method"), self._serve)
        self._hub.methods.router = self.invoke

    async def invoke(self, device_id: str, call: Any, *, hops: int = 0) -> MethodResult:
        """``MethodInvoker.invoke`` in a cluster: the device's subscribed link here, else the
        node holding it; waits up to ``connectTimeoutInSeconds`` for it to subscribe on any
        node (a device reconnecting moves between nodes). ``hops``: times the call was forwarded."""
        sessions, methods = self._hub.sessions, self._hub.methods
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.connect_timeout
        gone: str | None = None  # a holder that did not answer on the bus (died, lease not yet expired)
        while True:
            remaining = max(0, math.ceil(deadline - loop.time()))
            if sessions.subscribed_link(device_id, Subscription.METHODS) is not None:
                return await methods.invoke_local(device_id, replace(call, connect_timeout=remaining))
            if hops < _MAX_HOPS and not sessions.is_connected(device_id):  # connected here: it subscribes here or leaves
                holder = await self._holder(device_id)
                if holder is not None and holder not in (self._store.node_id, gone):
                    try:
                        return await self._forward(holder, device_id, replace(call, connect_timeout=remaining), hops + 1)
                    except NoResponderError:
                        gone = holder  # wait (within connectTimeoutInSeconds) for it to connect elsewhere
            left = deadline - loop.time()
            if left <= 0:
                raise _not_online(call.connect_timeout)
            await sessions.wait_for(device_id, Subscription.METHODS, min(_POLL, left))

    async def _forward(self, node: str, device_id: str, call: Any, hops: int = 1) -> MethodResult:
        timeout = call.connect_timeout + call.response_timeout + _BUS_MARGIN
        body = {**call_body(device_id, call), "hops": hops}
        try:
            reply = await self._bus.request(self._bus.subject("node", node, "method"), body, timeout)
        except TimeoutError:
            raise GatewayTimeoutError("Timed out waiting for the response from device.") from None
        except BusUnavailableError:
            raise ServiceUnavailableError(
                f"The device is connected to node {node}, and the cluster bus (NATS) is unreachable."
            ) from None
        return decode_outcome(reply)

    async def _serve(self, msg: Msg) -> None:
        await self._bus.respond(msg, await invoke_here(self._hub, json.loads(msg.data), self))


class DesiredRelay:
    """Sends desired notifications to the device's node; delivers them there in order, once."""

    def __init__(self, hub: Hub, store: ClusterStore, bus: Bus) -> None:
        self._hub = hub
        self._store = store
        self._bus = bus
        self._last: dict[str, int] = {}  #: last desired $version delivered per local device
        self._held: dict[str, dict[int, dict[str, Any]]] = {}  #: early notifications per device

    async def start(self) -> None:
        """Receive desired-property patches for devices here; send the hub's patches for remote devices."""
        await self._bus.subscribe(self._bus.subject("node", self._store.node_id, "desired"), self._receive)
        self._hub.twins.desired_sender = self.send

    def forget(self, device_id: str) -> None:
        """The device left this node: its ordering state restarts on its next visit."""
        self._last.pop(device_id, None)
        self._held.pop(device_id, None)

    async def send(self, record: Any, notification: dict[str, Any]) -> None:
        """``TwinService.desired_sender``: called once per committed desired change."""
        device_id, version = record.device_id, int(record.desired_version)
        if self._hub.sessions.is_connected(device_id):
            self._accept(device_id, version, notification)
            return
        holder = await self._store.holder(device_id)
        if holder is None or holder == self._store.node_id:
            return  # offline: the device GETs its twin when it connects
        self._bus.publish(
            self._bus.subject("node", holder, "desired"),
            {"deviceId": device_id, "version": version, "patch": notification},
        )

    async def _receive(self, msg: Msg) -> None:
        data = json.loads(msg.data)
        self._accept(data["deviceId"], int(data["version"]), data["patch"])

    def _accept(self, device_id: str, version: int, patch: dict[str, Any]) -> None:
        last = self._last.get(device_id)
        if last is not None and version <= last:
            return  # already delivered (exactly once)
        if last is None or version == last + 1:
            self._deliver(device_id, version, patch)
            self._drain(device_id)
            return
        # An earlier $version (written on another node) may still be on its way: wait for it.
        self._held.setdefault(device_id, {})[version] = patch
        asyncio.get_running_loop().call_later(_REORDER_WAIT, self._give_up_gap, device_id, version)

    def _drain(self, device_id: str) -> None:
        held = self._held.get(device_id)
        while held and self._last.get(device_id, 0) + 1 in held:
            version = self._last[device_id] + 1
            self._deliver(device_id, version, held.pop(version))
        if held is not None and not held:
            self._held.pop(device_id, None)

    def _give_up_gap(self, device_id: str, version: int) -> None:
        held = self._held.get(device_id)
        if not held or version not in held:
            return
        for v in sorted(v for v in held if v <= version):
            self._deliver(device_id, v, held.pop(v))
        self._drain(device_id)

    def _deliver(self, device_id: str, version: int, patch: dict[str, Any]) -> None:
        if version <= self._last.get(device_id, 0):
            return
        self._last[device_id] = version
        link = self._hub.sessions.subscribed_link(device_id, Subscription.DESIRED)
        if link is None:
            return
        body = json.dumps({**patch, "$version": version}, separators=(",", ":"), ensure_ascii=False).encode()
        link.send(f"$iothub/twin/PATCH/properties/desired/?$version={version}", body)
