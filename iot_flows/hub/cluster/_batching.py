"""Batched presence look-ups and batched job method calls between nodes.

A job's node starts hundreds of device invocations at once. Asked one at a time, each
device on another node costs presence look-ups and one NATS round trip, so two nodes ran
a job no faster than one. Here:

* :class:`PresenceLookup` answers "which live node holds X" for every device asked
  during one event-loop tick with one store query;
* :class:`JobCallBatcher` groups the job's invocations of one tick by the node holding
  each device and sends one NATS request per node (at most ``MAX_CALLS`` calls); that
  node invokes them locally, concurrently, and answers with one outcome per device.

The job engine's rules hold: a device is sent in exactly one batch, to one node, and
never re-sent after the request went out (a timeout is the device's 504101, as for a
single call); only "no node listens on that subject" (nothing was invoked) falls back to
the one-device path. Devices held by no live node take the one-device path too (it waits
``connectTimeoutInSeconds`` for them to connect anywhere).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from iot_flows._exceptions import GatewayTimeoutError, ServiceUnavailableError
from iot_flows._tasks import BackgroundTasks
from iot_flows._types import MethodResult
from iot_flows.hub import Subscription
from iot_flows.hub.cluster._bus import Bus, BusUnavailableError, NoResponderError
from iot_flows.hub.cluster._routing import MethodRouter, call_body, decode_outcome, invoke_here
from iot_flows.store import ClusterStore, GroupCommit

if TYPE_CHECKING:
    from iot_flows.hub import Hub

__all__ = ["JobCallBatcher", "PresenceLookup"]

MAX_CALLS = 200  #: method calls per NATS request (keeps replies under NATS' 1 MB default)
_BUS_MARGIN = 5.0  #: seconds a batch may take on the bus beyond its slowest call's timeouts


class PresenceLookup:
    """Coalesces ``holder(device_id)`` calls of one loop tick into one ``holders`` query
    (the store's :class:`~iot_flows.store.GroupCommit`, over reads)."""

    def __init__(self, store: ClusterStore) -> None:
        self._store = store
        self._batches: GroupCommit[str, str | None] = GroupCommit(self._query)

    @property
    def queries(self) -> int:
        """Store queries made (for tests and benchmarks)."""
        return self._batches.batches

    async def holder(self, device_id: str) -> str | None:
        """The live node holding ``device_id`` now, or None; raises what the store raised."""
        return await self._batches.submit(object(), device_id)  # a fresh key: asks for one device share a batch

    async def _query(self, device_ids: list[str]) -> list[str | None | BaseException]:
        found = await self._store.holders(list(dict.fromkeys(device_ids)))
        return [found.get(device_id) for device_id in device_ids]


class JobCallBatcher:
    """``JobEngine.invoke_method`` in a cluster: job calls grouped per holding node (module doc)."""

    def __init__(self, hub: Hub, store: ClusterStore, bus: Bus, router: MethodRouter) -> None:
        self._hub = hub
        self._store = store
        self._bus = bus
        self._router = router
        self._pending: list[tuple[str, Any, asyncio.Future[MethodResult]]] = []
        self._scheduled = False
        self._tasks = BackgroundTasks("job calls")
        self.requests = 0  #: batch requests sent (for tests and benchmarks)
        self.calls = 0  #: calls carried by them

    async def start(self) -> None:
        """Serve batches sent to this node and become the hub's job-call path."""
        await self._bus.subscribe(self._bus.subject("node", self._store.node_id, "methods"), self._serve)
        self._hub.jobs.invoke_method = self.invoke

    async def invoke(self, device_id: str, call: Any) -> MethodResult:
        """Invoke ``call`` on ``device_id`` wherever it is; same answers and errors as one call."""
        if self._hub.sessions.subscribed_link(device_id, Subscription.METHODS) is not None:
            return await self._hub.methods.invoke_local(device_id, call)
        future: asyncio.Future[MethodResult] = asyncio.get_running_loop().create_future()
        self._pending.append((device_id, call, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        return await future

    def _start(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        self._spawn(self._route(pending))

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro, name="job-calls")

    async def _route(self, pending: list[tuple[str, Any, asyncio.Future[MethodResult]]]) -> None:
        try:
            holders = await self._store.holders([d for d, _, _ in pending])
        except Exception:
            holders = {}  # presence unreadable: the one-device path answers each (503 etc.)
        by_node: dict[str, list[tuple[str, Any, asyncio.Future[MethodResult]]]] = {}
        for entry in pending:
            node = holders.get(entry[0])
            if node is None or node == self._store.node_id:
                self._spawn(self._one(entry))
            else:
                by_node.setdefault(node, []).append(entry)
        for node, entries in by_node.items():
            for start in range(0, len(entries), MAX_CALLS):
                self._spawn(self._send(node, entries[start : start + MAX_CALLS]))

    async def _one(self, entry: tuple[str, Any, asyncio.Future[MethodResult]]) -> None:
        device_id, call, future = entry
        try:
            result = await self._router.invoke(device_id, call)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not future.done():
            future.set_result(result)

    async def _send(self, node: str, entries: list[tuple[str, Any, asyncio.Future[MethodResult]]]) -> None:
        timeout = max(c.connect_timeout + c.response_timeout for _, c, _ in entries) + _BUS_MARGIN
        body = {"calls": [call_body(d, c) for d, c, _ in entries]}
        self.requests += 1
        self.calls += len(entries)
        try:
            reply = await self._bus.request(self._bus.subject("node", node, "methods"), body, timeout)
        except NoResponderError:  # nothing was invoked there: each device goes its own way
            for entry in entries:
                self._spawn(self._one(entry))
            return
        except TimeoutError:
            self._fail(entries, GatewayTimeoutError("Timed out waiting for the response from device."))
            return
        except BusUnavailableError:
            self._fail(entries, ServiceUnavailableError(
                f"The device is connected to node {node}, and the cluster bus (NATS) is unreachable."
            ))  # fmt: skip
            return
        for (_, _, future), outcome in zip(entries, reply["results"], strict=True):
            if future.done():
                continue
            try:
                future.set_result(decode_outcome(outcome))
            except Exception as exc:
                future.set_exception(exc)

    @staticmethod
    def _fail(entries: list[tuple[str, Any, asyncio.Future[MethodResult]]], exc: Exception) -> None:
        for _, _, future in entries:
            if not future.done():
                future.set_exception(exc)

    async def _serve(self, msg: Msg) -> None:
        calls = json.loads(msg.data)["calls"]
        results = await asyncio.gather(*(invoke_here(self._hub, c, self._router) for c in calls))
        await self._bus.respond(msg, {"results": list(results)})
