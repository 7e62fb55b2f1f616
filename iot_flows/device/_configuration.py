"""Configuration behaviours: maintenance window, desired configuration, the door (seed 000).

Desired configuration is acknowledged as in Azure's "configure devices with desired
properties" tutorial (docs/iothub-reference.md §7.1 and §7.4; Azure docs
``iot-hub-device-management-overview.md``, ``tutorial-firmware-update.md``): reported
``{..., "status": "Pending"}``, then the applied values with ``"status": "Success"``
and ``desiredVersion``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from iot_flows.device._behaviour import Behaviour, DesiredChange, register_behaviour
from iot_flows.device._faults import now_iso
from iot_flows.device._messages import MethodRequest, MethodResponse

if TYPE_CHECKING:
    from iot_flows.device._behaviours import DeviceBehaviour

__all__ = ["CONFIG_KEYS", "DesiredConfiguration", "Door", "MaintenanceWindowBehaviour"]

CONFIG_KEYS = ("telemetryConfig", "config")
_CONFIG_META = ("status", "pendingConfig", "desiredVersion", "error")


def _without(doc: Any, keys: tuple[str, ...]) -> Any:
    if not isinstance(doc, dict):
        return doc
    return {k: v for k, v in doc.items() if k not in keys and not k.startswith("$")}


def _same_ack(ack: dict[str, Any] | None, reported: Any) -> bool:
    """True when ``reported`` already shows ``ack`` (``None`` values mean "absent")."""
    if ack is None or reported is None:
        return ack is None and reported is None
    return bool(_without(reported, ()) == {k: v for k, v in ack.items() if v is not None})


@register_behaviour
class MaintenanceWindowBehaviour(Behaviour):
    """Desired ``maintenanceWindow``: firmware and configuration are applied only inside it.

    ::

        {"start": "22:00", "end": "04:00", "timezone": "UTC", "days": ["Sat", "Sun"]}

    Daily from ``start`` (inclusive) to ``end`` (exclusive), local to ``timezone``
    (``UTC``, an IANA name such as ``Europe/Berlin``, or an offset ``+02:00``; default
    UTC); a window with ``end`` before ``start`` crosses midnight (and belongs to the day
    it starts on); ``start == end`` means the whole day; ``days`` (optional,
    ``Mon``..``Sun``) restricts the days. ``null`` or no window means "any time".
    Acknowledged as reported ``maintenanceWindow`` with ``status`` ``Success`` (or
    ``Invalid`` with ``error``, keeping the previous window). Runs first (``order`` 0), so
    the other behaviours see the new window.
    """

    name = "maintenanceWindow"
    desired_keys = ("maintenanceWindow",)
    order = 0

    def on_twin(
        self, device: DeviceBehaviour, desired: dict[str, Any], reported: dict[str, Any], fresh: bool
    ) -> dict[str, Any] | None:
        """Set the window from the full twin; acknowledge it unless reported already."""
        ack = device.set_window(desired.get("maintenanceWindow"))
        return None if _same_ack(ack["maintenanceWindow"], reported.get("maintenanceWindow")) else ack

    def on_desired(self, device: DeviceBehaviour, change: DesiredChange) -> None:
        """Set the window from a patch and acknowledge it."""
        if not change.complete:  # a full twin was handled by on_twin
            device.report_soon(device.set_window(change.value))


@register_behaviour
class DesiredConfiguration(Behaviour):
    """Desired ``telemetryConfig`` and ``config`` (any JSON object).

    Reported ``{..., "status": "Pending", "pendingConfig": {...}}``, then
    (``waitingForMaintenanceWindow``), then the applied values with ``"status":
    "Success"`` (or ``"Failed"`` with ``error``), plus ``desiredVersion``: the desired
    ``$version`` acknowledged. A newer desired value supersedes one being applied;
    ``null`` removes the reported section.
    """

    name = "configuration"
    desired_keys = CONFIG_KEYS
    order = 20

    def on_desired(self, device: DeviceBehaviour, change: DesiredChange) -> None:
        """Apply ``telemetryConfig``/``config`` unless the twin reports it applied already."""
        key, value, version = change.key, change.value, change.version
        state = device.state_of(self.name)
        tasks: dict[str, asyncio.Task[None]] = state.setdefault("tasks", {})
        applied: dict[str, dict[str, Any]] = state.setdefault("applied", {})
        if key in tasks:
            tasks.pop(key).cancel()  # a newer desired value supersedes it
        if value is None:
            applied.pop(key, None)
            device.report_soon({key: None})
            return
        if not isinstance(value, dict):
            device.report_soon({key: {"status": "Failed", "error": "must be a JSON object", "desiredVersion": version}})
            return
        reported = change.reported
        if isinstance(reported, dict) and reported.get("status") == "Success" and _without(reported, _CONFIG_META) == value:
            applied[key] = value
            return  # already applied (e.g. by an earlier run of the simulator)
        task = device.spawn(self._apply(device, applied, key, value, version))
        tasks[key] = task
        task.add_done_callback(lambda t: tasks.pop(key, None) if tasks.get(key) is t else None)

    async def _apply(
        self, device: DeviceBehaviour, applied: dict[str, dict[str, Any]], key: str, value: dict[str, Any], version: int
    ) -> None:
        op = device.next_op()
        await device.report({key: {"status": "Pending", "pendingConfig": value, "desiredVersion": version}})
        await device.wait_for_window(lambda: device.report({key: {"status": "waitingForMaintenanceWindow"}}))
        await asyncio.sleep(device.duration(device.config.config_apply_seconds, "config", op))
        if device.chance("config", op) < device.config.config_failure_rate:
            device.stats["config_failed"] += 1
            await device.report({key: {"status": "Failed", "error": "simulated configuration failure", "pendingConfig": None}})
            return
        previous = applied.get(key, {})
        removed = {name: None for name in previous if name not in value and name not in _CONFIG_META}
        await device.report({key: {**removed, **value, "status": "Success", "pendingConfig": None,
                                   "desiredVersion": version, "error": None}})  # fmt: skip
        applied[key] = value
        device.stats["config_applied"] += 1

    def on_factory_reset(self, device: DeviceBehaviour) -> dict[str, Any]:
        """Stop applying, forget what was applied, clear the reported sections."""
        state = device.state_of(self.name)
        for task in list(state.get("tasks", {}).values()):
            task.cancel()
        state.clear()
        return {key: None for key in CONFIG_KEYS}


@register_behaviour
class Door(Behaviour):
    """Direct methods ``lockDoor`` / ``unlockDoor`` (seed 000): 200 ``{"locked": true|false}``;
    report ``door: {locked, lastChanged}``."""

    name = "door"
    methods = ("lockDoor", "unlockDoor")

    def on_method(self, device: DeviceBehaviour, request: MethodRequest) -> MethodResponse:
        """Lock or unlock; report the door's state."""
        locked = request.name == "lockDoor"
        device.stats["door"] += 1
        device.report_soon({"door": {"locked": locked, "lastChanged": now_iso()}})
        return MethodResponse(200, {"locked": locked})

    def on_factory_reset(self, device: DeviceBehaviour) -> dict[str, Any]:
        """Clear the reported ``door``."""
        return {"door": None}
