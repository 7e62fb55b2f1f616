"""Twin operations: service PATCH/PUT, device GET and reported PATCH, desired notifications.

Version rules (docs/iothub-reference.md §1.3, §9): desired ``$version`` and reported
``$version`` are independent counters starting at 1; every service write that carries
``properties.desired`` bumps desired ``$version`` by exactly one and notifies the
device, even when nothing changed. The root ``version`` and the ``etag`` change on
every twin change (tags, desired or reported), never on connect/disconnect.
Every change is committed before it is acknowledged or pushed to the device.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from iot_flows._exceptions import (
    BadRequestError,
    DeviceNotFoundError,
    PreconditionFailedError,
    ServiceUnavailableError,
)
from iot_flows._json import dumps
from iot_flows.hub._sessions import SessionRegistry, Subscription
from iot_flows.store import DeviceRecord, HubStore, new_etag
from iot_flows.twin import (
    apply_patch,
    removed_keys_as_nulls,
    replace_section,
    utc_now,
    validate_patch,
    validate_section_size,
)

__all__ = ["TwinChange", "TwinService", "check_if_match", "device_not_found"]

#: Listener of committed twin changes: (device_id, section, patch-as-applied, record).
TwinChange = Callable[[str, str, dict[str, Any], DeviceRecord], None]
#: Seconds a twin write keeps retrying a lost compare-and-set before it gives up with 503
#: (only other nodes race; a bounded time, not a count: a busy node's queue of writers to the
#: same twin can win many rounds in a row).
_CAS_SECONDS = 10.0


_R = TypeVar("_R")


def _one_writer_per_twin(
    method: Callable[..., Awaitable[_R]],
) -> Callable[..., Awaitable[_R]]:
    """Run read-modify-write of one twin one at a time (the store may suspend between them).

    A twin nobody else is writing costs a dict entry, not an :class:`asyncio.Lock`: later
    writers of the same twin queue a future on the entry and are handed the turn in order.
    """

    @functools.wraps(method)
    async def wrapper(self: TwinService, device_id: str, *args: Any, **kwargs: Any) -> _R:
        locks = self._locks
        waiters = locks.get(device_id)
        if waiters is None:
            waiters = locks[device_id] = deque()
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    _pass_turn(locks, device_id, waiters)  # handed the turn, then cancelled
                elif turn in waiters:
                    waiters.remove(turn)
                raise
        try:
            return await method(self, device_id, *args, **kwargs)
        finally:
            _pass_turn(locks, device_id, waiters)

    return wrapper


def _pass_turn(locks: dict[str, deque[asyncio.Future[None]]], device_id: str, waiters: deque[asyncio.Future[None]]) -> None:
    """End the current writer's turn on ``device_id``: wake the next waiter, or drop the entry."""
    while waiters:
        turn = waiters.popleft()
        if not turn.done():
            turn.set_result(None)
            return
    if locks.get(device_id) is waiters:
        del locks[device_id]


def device_not_found(device_id: str) -> DeviceNotFoundError:
    """The 404001 ``DeviceNotFoundError`` for ``device_id``."""
    return DeviceNotFoundError(f"Device {device_id} not registered")


def check_if_match(if_match: str | None, etag: str) -> None:
    """Enforce ``If-Match``: quoted or bare etag, ``*`` wildcard; mismatch is 412001."""
    if if_match is None:
        return
    value = if_match.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if value in ("*", etag):
        return
    raise PreconditionFailedError(f"Precondition failed: the etag '{if_match}' does not match the current one.")


class TwinService:
    """Twin reads and writes over the store, pushing desired changes to connected devices."""

    def __init__(self, store: HubStore, sessions: SessionRegistry) -> None:
        self._store = store
        self._sessions = sessions
        self._listeners: list[TwinChange] = []
        self._locks: dict[str, deque[asyncio.Future[None]]] = {}
        #: Set by a cluster node: delivers desired notifications wherever the device is.
        self.desired_sender: Callable[[DeviceRecord, dict[str, Any]], Awaitable[None]] | None = None

    def add_listener(self, listener: TwinChange) -> None:
        """Call ``listener`` after each committed twin change (change stream, events)."""
        self._listeners.append(listener)

    async def _load(self, device_id: str) -> DeviceRecord:
        record = await self._store.get(device_id)
        if record is None:
            raise device_not_found(device_id)
        return record

    # ---- service side -------------------------------------------------------------
    async def get(self, device_id: str) -> DeviceRecord:
        """The device's record (twin and identity); 404001 when unknown."""
        return await self._load(device_id)

    @_one_writer_per_twin
    async def update(
        self, device_id: str, body: Any, *, if_match: str | None = None, replace: bool = False
    ) -> DeviceRecord:
        """Service PATCH (merge) or PUT (replace tags + desired) of a twin."""
        if not isinstance(body, dict):
            raise BadRequestError("The twin body must be a JSON object.")
        has_tags, tags = "tags" in body, body.get("tags")
        properties = body.get("properties")
        if properties is not None and not isinstance(properties, dict):
            raise BadRequestError("'properties' must be a JSON object.")
        properties = properties or {}
        if properties.get("reported"):
            raise BadRequestError("Reported properties are read-only for the service.")
        has_desired, desired = "desired" in properties, properties.get("desired")
        if replace:
            has_tags = has_desired = True
            tags, desired = tags or {}, desired or {}
        for name, section in (("tags", tags), ("desired", desired)):
            if section is not None:
                validate_patch(name, section)

        notification: dict[str, Any] | None = None

        def build(record: DeviceRecord) -> DeviceRecord | None:
            nonlocal notification
            check_if_match(if_match, record.twin_etag)
            if not (has_tags or has_desired):
                return None
            now = utc_now()
            new = copy.deepcopy(record)
            notification = None
            if has_tags:
                if replace or tags is None:
                    new.tags, new.tags_meta = replace_section(tags or {}, now, None)
                else:
                    apply_patch(new.tags, new.tags_meta, tags, now, None)
                validate_section_size("tags", new.tags)
            if has_desired:
                new.desired_version += 1
                if replace or desired is None:
                    new.desired, new.desired_meta = replace_section(desired or {}, now, new.desired_version)
                    notification = removed_keys_as_nulls(record.desired, new.desired)
                else:
                    apply_patch(new.desired, new.desired_meta, desired, now, new.desired_version)
                    notification = copy.deepcopy(desired)
                validate_section_size("desired", new.desired)
            return new

        sections = tuple(name for name, has in (("tags", has_tags), ("desired", has_desired)) if has)
        record, new = await self._read_modify_write(device_id, build, sections)
        if new is None:
            return record
        if notification is not None:
            if self.desired_sender is not None:
                await self.desired_sender(new, copy.deepcopy(notification))
            else:
                self._notify_desired(new, notification)
            self._emit(device_id, "desired", notification, new)
        if has_tags:
            self._emit(device_id, "tags", tags or {}, new)
        return new

    async def _read_modify_write(
        self,
        device_id: str,
        build: Callable[[DeviceRecord], DeviceRecord | None],
        sections: tuple[str, ...] | None = None,
    ) -> tuple[DeviceRecord, DeviceRecord | None]:
        """Load the twin, ``build`` its next state, store it if nobody wrote in between.

        ``build`` returns None for "nothing to write" and raises for a refused write;
        ``sections``: the twin sections ``build`` may change (None: any). The
        store's compare-and-set on the twin ``version`` makes this safe when several hub
        nodes share one database; within one node the per-twin lock already orders writers,
        so a retry happens only when another node won the race.

        Raises:
            ServiceUnavailableError: the twin kept changing for ``_CAS_SECONDS`` (503, retryable).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CAS_SECONDS
        attempt = 0
        while True:
            record = await self._load(device_id)
            expected = record.twin_version  # ``build`` may return ``record`` itself, changed
            new = build(record)
            if new is None:
                return record, None
            new.twin_version = expected + 1
            new.twin_etag = new_etag()
            if await self._store.update_twin(new, expected_version=expected, sections=sections):
                return record, new
            if loop.time() >= deadline:
                break
            attempt += 1  # lost to another node: a short jittered pause lets the two interleave
            await asyncio.sleep(random.uniform(0, min(0.02, 0.0005 * 2**attempt)))
        raise ServiceUnavailableError(f"The twin of {device_id} kept changing under concurrent writes; retry.")

    def _notify_desired(self, record: DeviceRecord, notification: dict[str, Any]) -> None:
        link = self._sessions.subscribed_link(record.device_id, Subscription.DESIRED)
        if link is None:
            return  # not stored for offline devices: they GET the twin on reconnect
        notification["$version"] = record.desired_version
        link.send(
            f"$iothub/twin/PATCH/properties/desired/?$version={record.desired_version}",
            dumps(notification).encode(),
        )

    # ---- device side --------------------------------------------------------------
    async def device_view(self, device_id: str) -> dict[str, Any]:
        """The twin as a device reads it over MQTT: ``{"desired": ..., "reported": ...}``."""
        return (await self._load(device_id)).device_twin_view()

    @_one_writer_per_twin
    async def report(self, device_id: str, patch: Any, *, if_version: int | None = None) -> int:
        """Merge a device's reported patch; return the new reported ``$version``.

        ``if_version`` (``&$version=`` on the PATCH topic, as the Java device SDK 2.x
        sends it) must equal the current reported ``$version``, else 412 and nothing
        is stored (the MQTT 5 reference's ``if-version``; Azure/azure-iot-sdk-java#1776).
        """
        validate_patch("reported", patch)

        def build(record: DeviceRecord) -> DeviceRecord:
            if if_version is not None and if_version != record.reported_version:
                raise PreconditionFailedError(
                    f"Precondition failed: reported $version is {record.reported_version}, not {if_version}."
                )
            # changed in place: the store returns each caller its own record, and this one is
            # not used again (a refused or lost write reloads)
            apply_patch(record.reported, record.reported_meta, patch, utc_now(), None)
            validate_section_size("reported", record.reported)
            record.reported_version += 1
            return record

        _, new = await self._read_modify_write(device_id, build, ("reported",))
        assert new is not None
        self._emit(device_id, "reported", patch, new)
        return new.reported_version

    def _emit(self, device_id: str, section: str, patch: dict[str, Any], record: DeviceRecord) -> None:
        for listener in self._listeners:
            listener(device_id, section, patch, record)
