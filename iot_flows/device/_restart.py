"""Restart behaviours: ``reboot`` (seed 002, docs/iothub-reference.md §7.2) and ``factoryReset``.

Both answer 200 at once, go offline (clean DISCONNECT), come back, report, then read
the twin again and apply what is desired. Both interrupt a running firmware update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iot_flows.device._behaviour import Behaviour, register_behaviour
from iot_flows.device._faults import now_iso
from iot_flows.device._firmware import interrupted_patch
from iot_flows.device._messages import MethodRequest, MethodResponse

if TYPE_CHECKING:
    from iot_flows.device._behaviours import DeviceBehaviour

__all__ = ["FactoryReset", "Reboot", "merge_patch"]

_BUSY = MethodResponse(409, {"message": "the device is already restarting"})


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into ``target`` (nested objects merged key by key); return ``target``."""
    for key, value in patch.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merge_patch(current, value)
        else:
            target[key] = value
    return target


class _Restart(Behaviour):
    """A restart by direct method: answer 200 at once (409 while one runs), restart in the
    background (:meth:`_restart`), then read the twin again and apply what is desired."""

    order = 30
    #: The 200 answer's ``message``.
    started = "Restart started"
    #: Apply desired state as on a new device (everything applied before was forgotten).
    fresh = False

    def on_method(self, device: DeviceBehaviour, request: MethodRequest) -> MethodResponse:
        """Answer 200 (409 while restarting) and restart in the background."""
        if device.busy:
            return _BUSY
        device.busy = True
        device.spawn(self._run(device))
        return MethodResponse(200, {"message": self.started})

    async def _run(self, device: DeviceBehaviour) -> None:
        try:
            await self._restart(device)
        finally:
            device.busy = False
        await device.resume_desired(fresh=self.fresh)

    async def _restart(self, device: DeviceBehaviour) -> None:
        raise NotImplementedError


@register_behaviour
class Reboot(_Restart):
    """Direct method ``reboot``: 200 ``{"message": "Reboot started"}``; offline for
    ``reboot_seconds``; reconnect; report ``iothubDM.reboot.lastReboot``. An interrupted
    firmware update reports ``applyFailed`` / ``rolledback``. 409 while restarting."""

    name = "reboot"
    methods = ("reboot",)
    started = "Reboot started"

    async def _restart(self, device: DeviceBehaviour) -> None:
        device.stats["reboots"] += 1
        interrupted = await device.interrupt_update()
        await device.offline(device.config.reboot_seconds)
        await device.report({"iothubDM": {"reboot": {"lastReboot": now_iso()}}})
        if interrupted is not None:
            device.stats["fw_interrupted"] += 1
            await device.report(interrupted_patch(device, interrupted[0], "interrupted by reboot"))


@register_behaviour
class FactoryReset(_Restart):
    """Direct method ``factoryReset``: 200; offline for ``factory_reset_seconds``; back
    on the factory firmware with every behaviour's applied state forgotten (their
    ``on_factory_reset`` patches, plus ``iothubDM.factoryReset.lastFactoryReset``, are
    reported as one); then desired configuration and firmware are applied again, as on
    a new device. 409 while restarting."""

    name = "factoryReset"
    methods = ("factoryReset",)
    started = "Factory reset started"
    fresh = True

    async def _restart(self, device: DeviceBehaviour) -> None:
        device.stats["factory_resets"] += 1
        await device.interrupt_update()
        patch: dict[str, Any] = {}
        for behaviour in device.behaviours:
            merge_patch(patch, behaviour.on_factory_reset(device) or {})
        await device.offline(device.config.factory_reset_seconds)
        await device.report(merge_patch(patch, {"iothubDM": {"factoryReset": {"lastFactoryReset": now_iso()}}}))
