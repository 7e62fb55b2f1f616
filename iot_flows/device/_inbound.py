"""What a :class:`DeviceClient` receives: twin responses, desired patches, direct-method calls.

Inbound PUBLISHes (docs/iothub-reference.md §2) are routed by topic: ``$iothub/twin/res/...`` completes
the pending twin request with the same ``$rid`` (the request ledger);
``$iothub/twin/PATCH/properties/desired/...`` goes to the desired handler, in
``$version`` order and never twice (docs/iothub-reference.md §1.3); ``$iothub/methods/POST/{name}/...``
goes to the method handler, whose result is published on ``$iothub/methods/res/...``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import urllib.parse
from collections.abc import Awaitable
from typing import Any, TypeVar

from iot_flows._exceptions import RequestTimeoutError, TransportError
from iot_flows.device._ledger import RequestLedger
from iot_flows.device._messages import (
    DesiredHandler,
    DesiredUpdate,
    DeviceTwin,
    MethodHandler,
    MethodRequest,
    MethodResult,
    coerce_method_result,
    dumps,
    parse_query,
    twin_error,
)
from iot_flows.device._transport import MqttConnection

__all__ = ["InboundMixin"]

log = logging.getLogger("iot_flows.device._client")
T = TypeVar("T")

_TWIN_RES = "$iothub/twin/res/"
_METHOD_POST = "$iothub/methods/POST/"
_DESIRED_PATCH = "$iothub/twin/PATCH/properties/desired/"


class InboundMixin:
    """Routing of inbound messages and the handlers' bookkeeping (base of ``DeviceClient``)."""

    __slots__ = (
        "device_id", "_conn", "_ledger", "_desired_version", "_desired_buffer", "_desired_handler",
        "_desired_chain", "_method_handlers", "_default_method_handler", "_tasks",
    )  # fmt: skip

    device_id: str
    _conn: MqttConnection | None
    _ledger: RequestLedger
    _desired_version: int
    _desired_buffer: list[dict[str, Any]] | None
    _desired_handler: DesiredHandler | None
    _desired_chain: asyncio.Task[None] | None
    _method_handlers: dict[str, MethodHandler] | None
    _default_method_handler: MethodHandler | None
    _tasks: set[asyncio.Task[Any]] | None

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.startswith(_TWIN_RES):
            status_text, _, query = topic[len(_TWIN_RES) :].partition("/?")
            params = parse_query(query)
            rid = params.get("$rid")
            try:
                status = int(status_text)
                version = int(params["$version"]) if "$version" in params else None
            except ValueError:
                log.warning("%s: malformed twin response topic %r", self.device_id, topic)
                return
            if rid is not None:
                self._ledger.resolve(rid, (status, version, payload))
        elif topic.startswith(_METHOD_POST):
            name, _, query = topic[len(_METHOD_POST) :].partition("/?")
            rid = parse_query(query).get("$rid")
            if rid is not None:
                self._dispatch_method(urllib.parse.unquote(name), rid, payload)
        elif topic.startswith(_DESIRED_PATCH):
            self._on_desired_patch(payload)
        else:
            log.debug("%s: ignoring message on %r", self.device_id, topic)

    # ---- twin requests --------------------------------------------------------------
    async def _get_twin_on(self, conn: MqttConnection, timeout: float) -> DeviceTwin:
        status, _, payload = await self._twin_request(conn, "$iothub/twin/GET/", b" ", timeout)
        body = json.loads(payload)
        return DeviceTwin(desired=body.get("desired") or {}, reported=body.get("reported") or {})

    async def _twin_request(
        self, conn: MqttConnection, prefix: str, body: bytes, timeout: float
    ) -> tuple[int, int | None, bytes]:
        # QoS 0 on purpose: the $rid response is the acknowledgement; QoS 1 would only
        # add a PUBACK per request and paho's in-flight bookkeeping.
        with self._ledger.pending() as (rid, future):
            conn.publish(f"{prefix}?$rid={rid}", body, qos=0)
            try:
                async with asyncio.timeout(timeout):
                    status, version, payload = await future
            except TimeoutError:
                raise RequestTimeoutError(f"{self.device_id!r}: no twin response within {timeout:g} s") from None
        if status >= 300:
            raise twin_error(status, payload)
        return status, version, payload

    # ---- desired properties ---------------------------------------------------------
    def _on_desired_patch(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: malformed desired patch %r", self.device_id, payload[:100])
            return
        if not isinstance(doc, dict):
            return
        if self._desired_buffer is not None:  # (re)connecting: wait for the full twin
            self._desired_buffer.append(doc)
            return
        self._deliver_patch(doc)

    def _deliver_patch(self, doc: dict[str, Any]) -> None:
        version = doc.pop("$version", None)
        if isinstance(version, int):
            if version <= self._desired_version:
                return  # already part of the twin we fetched (docs/iothub-reference.md §1.3)
            self._desired_version = version
        self._call_desired(DesiredUpdate(doc, self._desired_version, complete=False))

    def _reconcile(self, twin: DeviceTwin) -> None:
        """Hand the full desired document over (if its version is new), then held-back patches."""
        buffered, self._desired_buffer = self._desired_buffer or [], None
        desired = dict(twin.desired)
        version = desired.pop("$version", 0)
        # "!=" rather than ">": a lower version means the twin was re-created.
        if not isinstance(version, int) or version != self._desired_version:
            self._desired_version = version if isinstance(version, int) else 0
            self._call_desired(DesiredUpdate(desired, self._desired_version, complete=True, reported=twin.reported))
        for doc in buffered:
            self._deliver_patch(doc)

    def _call_desired(self, update: DesiredUpdate) -> None:
        handler = self._desired_handler
        if handler is None:
            return
        try:
            result = handler(update)
        except Exception:
            log.exception("%s: desired handler failed", self.device_id)
            return
        if inspect.isawaitable(result):
            previous = self._desired_chain

            async def run_in_order() -> None:
                if previous is not None and not previous.done():
                    try:
                        await previous
                    except BaseException:
                        pass
                try:
                    await result
                except Exception:
                    log.exception("%s: desired handler failed", self.device_id)

            self._desired_chain = self._spawn(run_in_order())

    # ---- direct methods -------------------------------------------------------------
    def _dispatch_method(self, name: str, rid: str, payload: bytes) -> None:
        try:
            value = json.loads(payload) if payload.strip() else None
        except (ValueError, UnicodeDecodeError):
            value = payload.decode("utf-8", "replace")
        handler = (self._method_handlers or {}).get(name) or self._default_method_handler
        if handler is None:
            self._reply(rid, 501, {"message": f"method {name!r} is not implemented by this device"})
            return
        try:
            result = handler(MethodRequest(name, value, rid))
        except Exception as exc:
            log.exception("%s: method handler %r failed", self.device_id, name)
            self._reply(rid, 500, {"message": f"{type(exc).__name__}: {exc}"})
            return
        if inspect.isawaitable(result):
            self._spawn(self._finish_method(name, rid, result))
        else:
            self._reply_result(name, rid, result)

    async def _finish_method(self, name: str, rid: str, pending: Awaitable[MethodResult]) -> None:
        try:
            result = await pending
        except Exception as exc:
            log.exception("%s: method handler %r failed", self.device_id, name)
            self._reply(rid, 500, {"message": f"{type(exc).__name__}: {exc}"})
            return
        self._reply_result(name, rid, result)

    def _reply_result(self, name: str, rid: str, result: MethodResult) -> None:
        try:
            status, payload = coerce_method_result(result)
        except (TypeError, ValueError) as exc:
            log.error("%s: method handler %r: %s", self.device_id, name, exc)
            self._reply(rid, 500, {"message": str(exc)})
            return
        self._reply(rid, status, payload)

    def _reply(self, rid: str, status: int, payload: Any) -> None:
        conn = self._conn
        if conn is None:
            log.debug("%s: not connected; method reply %s dropped", self.device_id, rid)
            return
        try:
            conn.publish(f"$iothub/methods/res/{int(status)}/?$rid={rid}", dumps(payload).encode(), qos=1)
        except (TransportError, ValueError, TypeError) as exc:
            log.warning("%s: cannot send method reply %s: %s", self.device_id, rid, exc)

    # ---- handler tasks --------------------------------------------------------------
    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None
