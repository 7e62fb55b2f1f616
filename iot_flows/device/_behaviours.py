"""A simulated device's device-management logic (docs/iothub-reference.md §7; seeds 000-003).

:class:`DeviceBehaviour` drives one :class:`DeviceClient`: it routes direct methods and
desired properties to the registered :class:`~iot_flows.device.Behaviour` classes
(``_behaviour.py``) and keeps what they share: the firmware version, the running
firmware update, the maintenance window, the statistics, and helpers to report, go
offline and roll the fault-injection dice (``_faults.py``). Everything a behaviour does
is observable only through the hub: direct-method replies and reported properties.

Seed behaviours, one class each: ``maintenanceWindow`` and ``configuration``
(``telemetryConfig``/``config``) and ``door`` (``lockDoor``/``unlockDoor``) in
``_configuration.py``; ``firmwareUpdate`` (method) and ``desiredFirmware`` in
``_firmware.py``; ``reboot`` and ``factoryReset`` in ``_restart.py``. A method no
behaviour answers is answered 501.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from iot_flows._exceptions import HubError, TransportError
from iot_flows._window import MaintenanceWindow
from iot_flows.device import _configuration, _firmware, _restart  # noqa: F401  (register the seeds)
from iot_flows.device._behaviour import Behaviour, DesiredChange, dispatch_for
from iot_flows.device._client import DeviceClient
from iot_flows.device._faults import BehaviourConfig, chance
from iot_flows.device._messages import DesiredUpdate, DeviceTwin, MethodRequest, MethodResponse

__all__ = ["BehaviourConfig", "DeviceBehaviour", "MaintenanceWindow", "chance"]

log = logging.getLogger(__name__)


class DeviceBehaviour:
    """The device-management logic of one simulated device, driving its :class:`DeviceClient`.

    ``behaviours`` names the registered behaviours this device has (default: all).
    Raises ``KeyError`` for a name nobody registered.
    """

    __slots__ = (
        "client", "config", "seed", "stats", "fw_version", "slow", "busy", "adopted", "update_kind",
        "update_version", "pending_fw", "_dispatch", "_ops", "_update_task", "_window", "_window_event",
        "_state", "_tasks", "_closed",
    )  # fmt: skip

    def __init__(
        self,
        client: DeviceClient,
        config: BehaviourConfig,
        *,
        seed: int | str = 0,
        stats: Counter[str] | None = None,
        behaviours: Iterable[str] | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.seed = seed
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.fw_version = config.factory_firmware_version
        self.slow = chance(seed, client.device_id, "slow") < config.slow_rate
        self.busy = False  #: rebooting or resetting
        self.adopted = False  #: the first twin was seen (firmware taken over from it)
        self.update_kind = ""  #: "method" or "desired" while a firmware update runs
        self.update_version = ""
        self.pending_fw: dict[str, Any] | None = None  #: desired firmware to apply next
        self._dispatch = dispatch_for(behaviours)
        self._ops = 0
        self._update_task: asyncio.Task[None] | None = None
        self._window: MaintenanceWindow | None = None
        self._window_event: asyncio.Event | None = None
        self._state: dict[str, dict[str, Any]] | None = None
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._closed = False
        client.on_desired(self._on_desired)
        client.on_method(None, self._on_method)

    @property
    def device_id(self) -> str:
        """The device's id."""
        return self.client.device_id

    @property
    def behaviours(self) -> list[Behaviour]:
        """This device's behaviours, in ``order``."""
        return self._dispatch.behaviours

    @property
    def updating(self) -> bool:
        """True while a firmware update runs."""
        return self._update_task is not None

    def state_of(self, name: str) -> dict[str, Any]:
        """The per-device state dict of behaviour ``name`` (made on first use)."""
        if self._state is None:
            self._state = {}
        return self._state.setdefault(name, {})

    # ---- plumbing -----------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this device (cancelled by :meth:`close`; failures logged)."""
        task = asyncio.get_running_loop().create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: behaviour task failed", self.device_id, exc_info=task.exception())

    async def close(self) -> None:
        """Stop every running behaviour task (the fleet is stopping)."""
        self._closed = True
        tasks = list(self._tasks or ())
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:
                pass

    def next_op(self) -> int:
        """A new operation number (the ``n`` of :func:`chance`) for this device."""
        self._ops += 1
        return self._ops

    def chance(self, what: str, op: int) -> float:
        """This device's reproducible number in [0, 1) for ``what`` in operation ``op``."""
        return chance(self.seed, self.device_id, what, op)

    def duration(self, seconds: float, what: str, op: int) -> float:
        """``seconds`` with jitter (and the slow factor for slow devices), never negative."""
        factor = 1.0 + self.config.jitter * (2.0 * self.chance(f"jitter:{what}", op) - 1.0)
        if self.slow:
            factor *= self.config.slow_factor
        return max(0.0, seconds * factor)

    async def report(self, patch: dict[str, Any]) -> bool:
        """Report ``patch``, retrying across reconnects; False if the hub rejected it."""
        delay = 0.1
        while not self._closed:
            try:
                await self.client.patch_reported(patch)
                return True
            except HubError as exc:
                if not exc.retryable:
                    log.warning("%s: reported patch rejected: %s", self.device_id, exc)
                    return False
            except TransportError:  # includes RequestTimeoutError
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        return False

    def report_soon(self, patch: dict[str, Any]) -> None:
        """:meth:`report` in a task (reports go out in the order they were asked for)."""
        self.spawn(self.report(patch))

    async def offline(self, seconds: float) -> None:
        """Go offline (clean DISCONNECT), stay away ``seconds``, connect again."""
        await self.client.disconnect()
        await asyncio.sleep(seconds)
        if not self._closed:
            await self.client.connect(retry=True)

    async def drop_and_return(self, seconds: float) -> None:
        """Churn: lose the connection without DISCONNECT, come back after ``seconds``."""
        if self.busy or self._closed or not self.client.connected:
            return
        self.busy = True
        try:
            self.stats["churn"] += 1
            await self.client.disconnect(graceful=False)
            await asyncio.sleep(seconds)
            if not self._closed:
                await self.client.connect(retry=True)
        finally:
            self.busy = False

    # ---- maintenance window ---------------------------------------------------------
    async def wait_for_window(self, report_waiting: Callable[[], Awaitable[Any]]) -> None:
        """Return once the maintenance window is open (at once without a window); call
        ``report_waiting()`` once if it has to wait. Re-checks when the window changes."""
        reported = False
        while True:
            window = self._window
            if window is None or window.is_open():
                return
            if not reported:
                reported = True
                self.stats["waited_for_window"] += 1
                await report_waiting()
            if self._window_event is None:
                self._window_event = asyncio.Event()
            event = self._window_event
            delay = min(window.seconds_until_open(), self.config.window_recheck_seconds)
            try:
                await asyncio.wait_for(event.wait(), timeout=max(delay, 0.05))
            except TimeoutError:
                pass

    def set_window(self, doc: Any) -> dict[str, Any]:
        """Apply a desired ``maintenanceWindow`` (``None``: any time); return the reported
        acknowledgement ``{"maintenanceWindow": {..., "status": "Success"|"Invalid"}}``.
        An invalid window keeps the previous one."""
        if doc is None:
            self._window = None
            ack: dict[str, Any] | None = None
        else:
            try:
                self._window = MaintenanceWindow.parse(doc)
                ack = {**doc, "status": "Success", "error": None}
            except ValueError as exc:
                ack = {"status": "Invalid", "error": str(exc)}
        event, self._window_event = self._window_event, None
        if event is not None:
            event.set()  # waiting updates re-check the new window
        return {"maintenanceWindow": ack}

    # ---- desired properties ---------------------------------------------------------
    def _on_desired(self, update: DesiredUpdate) -> None:
        if self._closed:
            return
        if update.complete:
            self.reconcile(update.properties, update.reported or {}, update.version)
        else:
            self._apply(update.properties, update.version, None)

    def reconcile(self, desired: dict[str, Any], reported: dict[str, Any], version: int, *, fresh: bool = False) -> None:
        """Bring the device in line with a full twin (first connect, reconnect, restart;
        ``fresh`` after a factory reset): every behaviour's ``on_twin`` patch is reported
        as one, then ``on_desired`` runs for the desired keys present."""
        patch: dict[str, Any] = {}
        for behaviour in self._dispatch.behaviours:
            part = behaviour.on_twin(self, desired, reported, fresh)
            if part:
                patch.update(part)
        if patch:
            self.report_soon(patch)
        self._apply(desired, version, None if fresh else reported, complete=True)

    def _apply(self, props: dict[str, Any], version: int, reported: dict[str, Any] | None, *, complete: bool = False) -> None:
        for key, behaviour in self._dispatch.desired:
            if key in props:
                seen = reported.get(key) if reported is not None else None
                behaviour.on_desired(self, DesiredChange(key, props[key], version, complete, seen))

    async def resume_desired(self, *, fresh: bool = False) -> None:
        """After a restart the device reads its twin again and applies what is desired."""
        if self._closed:
            return
        self.pending_fw = None  # the twin says what is wanted now
        try:
            twin: DeviceTwin = await self.client.get_twin()
        except (HubError, TransportError) as exc:
            log.info("%s: cannot read the twin after restart: %s", self.device_id, exc)
            return
        desired = {k: v for k, v in twin.desired.items() if k != "$version"}
        self.reconcile(desired, {} if fresh else twin.reported, twin.desired_version, fresh=fresh)

    # ---- firmware update slot (shared by the firmware, reboot and reset behaviours) ---
    def start_update(self, kind: str, version: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run firmware update ``coro`` (``kind`` "method" or "desired", to ``version``)."""
        self.update_kind, self.update_version = kind, version
        task = self.spawn(coro)
        self._update_task = task
        task.add_done_callback(self._update_done)
        self.stats["fw_started"] += 1

    def _update_done(self, task: asyncio.Task[None]) -> None:
        if self._update_task is task:
            self._update_task = None
            self.update_kind = self.update_version = ""
        pending, self.pending_fw = self.pending_fw, None
        if pending is not None and not self._closed and not self.busy:
            self._apply({"firmware": pending}, self.client.desired_version, None)

    async def interrupt_update(self) -> tuple[str, str] | None:
        """Stop a running update (reboot, reset); return its ``(kind, version)``, if any."""
        task = self._update_task
        if task is None:
            return None
        kind, version = self.update_kind, self.update_version
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        return kind, version

    # ---- direct methods -------------------------------------------------------------
    def _on_method(self, request: MethodRequest) -> Any:
        behaviour = self._dispatch.methods.get(request.name)
        self.stats[f"method:{request.name}"] += 1
        if behaviour is None:
            return MethodResponse(501, {"message": f"method {request.name!r} is not implemented"})
        if self.slow:
            return self._slow_reply(behaviour, request)
        return behaviour.on_method(self, request)

    async def _slow_reply(self, behaviour: Behaviour, request: MethodRequest) -> Any:
        await asyncio.sleep(self.config.slow_reply_seconds)
        result = behaviour.on_method(self, request)
        return await result if isinstance(result, Awaitable) else result
