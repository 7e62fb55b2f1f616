"""Firmware update behaviours: by direct method and by desired property (docs/iothub-reference.md §7.3, §7.4).

Both share the device's update slot (:meth:`DeviceBehaviour.start_update`): one update
at a time; a reboot or factory reset interrupts it. Firmware is downloaded at any time
and only *applied* inside the maintenance window.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from iot_flows.device._behaviour import Behaviour, DesiredChange, register_behaviour
from iot_flows.device._faults import now_iso
from iot_flows.device._messages import MethodRequest, MethodResponse

if TYPE_CHECKING:
    from iot_flows.device._behaviours import DeviceBehaviour

__all__ = ["DesiredFirmware", "FirmwareUpdateMethod", "firmware_state"]

_VERSION_IN_URI = re.compile(r"(\d+(?:\.\d+)+)")


def firmware_state(device: DeviceBehaviour, status: str, substatus: str) -> dict[str, Any]:
    """The reported patch for the device's current firmware with ``fwUpdateStatus``."""
    v = device.fw_version
    return {
        "firmware": {
            "version": v, "currentFwVersion": v, "pendingFwVersion": "", "fwUpdateStatus": status,
            "fwUpdateSubstatus": substatus,
        },
        "iothubDM": {"firmwareVersion": v},
    }  # fmt: skip


def rolled_back(device: DeviceBehaviour, why: str) -> dict[str, Any]:
    """The reported patch for a desired-property update that ended without applying."""
    return {"firmware": {"currentFwVersion": device.fw_version, "pendingFwVersion": "", "fwUpdateStatus": "rolledback",
                         "fwUpdateSubstatus": why, "lastFwUpdateEndTime": now_iso()}}  # fmt: skip


async def hang(device: DeviceBehaviour) -> None:
    """Accept an update and then never report again (until a reboot or the fleet stops)."""
    device.stats["fw_hung"] += 1
    await asyncio.get_running_loop().create_future()


def _firmware_target(payload: Any) -> tuple[str | None, str | None]:
    if isinstance(payload, str):
        return payload, None
    if isinstance(payload, dict):
        uri = payload.get("fwPackageUri") or payload.get("fwPackageURI")
        version = payload.get("version") or payload.get("fwVersion")
        return (uri if isinstance(uri, str) else None), (str(version) if version is not None else None)
    return None, None


def _version_from_uri(uri: str) -> str:
    found = _VERSION_IN_URI.findall(uri.rsplit("/", 1)[-1]) or _VERSION_IN_URI.findall(uri)
    return found[-1] if found else "unknown"


@register_behaviour
class FirmwareUpdateMethod(Behaviour):
    """Direct method ``firmwareUpdate`` (seed 003, docs/iothub-reference.md §7.3).

    Payload ``{"fwPackageUri": "https://...", "version": "2.0.0"}`` (or the URI as a JSON
    string, as in the C sample; without ``version`` it is read from the URI,
    ``.../fw-2.1.0.bin`` -> ``2.1.0``). A non-https URI is answered 400, an update while
    one is running 409; otherwise 200 at once, then ``iothubDM.firmwareUpdate.status``
    goes ``waiting`` -> ``downloading`` -> ``downloadComplete`` ->
    (``waitingForMaintenanceWindow``) -> ``applying`` -> ``applyComplete``, or ends in
    ``downloadFailed`` / ``applyFailed`` with ``error: {code, message}``. On success the
    new version is reported as ``firmware.version``, ``firmware.currentFwVersion`` and
    ``iothubDM.firmwareVersion``.
    """

    name = "firmwareUpdate"
    methods = ("firmwareUpdate",)
    order = 10

    def on_method(self, device: DeviceBehaviour, request: MethodRequest) -> MethodResponse:
        """Validate the package URI, start the update, answer at once (400/409/200)."""
        uri, version = _firmware_target(request.payload)
        if not uri:
            return MethodResponse(400, {"message": "the payload needs fwPackageUri"})
        if not uri.lower().startswith("https://"):
            device.stats["fw_rejected"] += 1
            return MethodResponse(400, {"message": f"fwPackageUri must be an https URI, got {uri!r}"})
        if device.updating or device.busy:
            running = {"message": "a firmware update is already running", "version": device.update_version}
            return MethodResponse(409, running)
        version = version or _version_from_uri(uri)
        device.start_update("method", version, self._run(device, uri, version))
        return MethodResponse(200, {"message": "FirmwareUpdate started", "version": version})

    async def _run(self, device: DeviceBehaviour, uri: str, version: str) -> None:
        op = device.next_op()
        cfg = device.config

        async def status(value: str, **fields: Any) -> None:
            await device.report({"iothubDM": {"firmwareUpdate": {"status": value, **fields}}})

        if device.chance("hang", op) < cfg.hang_rate:
            await hang(device)
        await status("waiting", fwPackageUri=uri, version=version, error=None, startedWaitingTime=now_iso())
        await asyncio.sleep(device.duration(cfg.fw_wait_seconds, "wait", op))
        await status("downloading", startedDownloadingTime=now_iso())
        await asyncio.sleep(device.duration(cfg.fw_download_seconds, "download", op))
        if device.chance("download", op) < cfg.download_failure_rate:
            device.stats["fw_download_failed"] += 1
            await status("downloadFailed", error={"code": "DownloadFailed", "message": f"cannot download {uri} (simulated)"})
            return
        await status("downloadComplete", downloadCompleteTime=now_iso())
        await device.wait_for_window(lambda: status("waitingForMaintenanceWindow"))
        await status("applying", startedApplyingImage=now_iso())
        await asyncio.sleep(device.duration(cfg.fw_apply_seconds, "apply", op))
        if device.chance("apply", op) < cfg.apply_failure_rate:
            device.stats["fw_apply_failed"] += 1
            await status("applyFailed", error={"code": "ApplyFailed", "message": "cannot apply image (simulated)"})
            return
        device.fw_version = version
        await device.report({
            "iothubDM": {"firmwareVersion": version, "firmwareUpdate": {"status": "applyComplete", "lastFirmwareUpdate": now_iso()}},
            "firmware": {"version": version, "currentFwVersion": version},
        })  # fmt: skip
        device.stats["fw_succeeded"] += 1
        if cfg.fw_reboot_seconds > 0:
            await device.offline(device.duration(cfg.fw_reboot_seconds, "fwreboot", op))

    def on_factory_reset(self, device: DeviceBehaviour) -> dict[str, Any]:
        """Clear the reported ``iothubDM.firmwareUpdate``."""
        return {"iothubDM": {"firmwareUpdate": None}}


@register_behaviour
class DesiredFirmware(Behaviour):
    """Desired ``firmware: {fwVersion, fwPackageURI, fwPackageCheckValue}`` (docs/iothub-reference.md §7.4).

    Reported ``firmware: {currentFwVersion, pendingFwVersion, fwUpdateStatus,
    fwUpdateSubstatus, lastFwUpdateStartTime, lastFwUpdateEndTime}``; the status goes
    ``downloading`` -> ``verifying`` -> (``waitingForMaintenanceWindow``) -> ``applying``
    -> (``rebooting``) -> ``current``; a failure reports ``error`` then ``rolledback``; an
    insecure URI reports ``error`` ("Insecure package URI"); the current version reports
    ``current`` ("already up to date"). A new desired version that arrives during an
    update is applied after it. On the first twin the device takes its firmware version
    from the reported ``currentFwVersion`` (it kept its firmware across simulator runs)
    or reports its factory firmware (``report_initial_state``).
    """

    name = "desiredFirmware"
    desired_keys = ("firmware",)
    order = 10

    def on_twin(
        self, device: DeviceBehaviour, desired: dict[str, Any], reported: dict[str, Any], fresh: bool
    ) -> dict[str, Any] | None:
        """On the first twin: adopt the reported firmware version or report the factory one."""
        if device.adopted or fresh:
            return None
        device.adopted = True
        firmware = reported.get("firmware")
        current = firmware.get("currentFwVersion") if isinstance(firmware, dict) else None
        if isinstance(current, str) and current:
            device.fw_version = current
            return None
        return firmware_state(device, "current", "") if device.config.report_initial_state else None

    def on_desired(self, device: DeviceBehaviour, change: DesiredChange) -> None:
        """Start an update to ``fwVersion`` (or queue it behind the running one)."""
        spec, reported = change.value, change.reported if isinstance(change.reported, dict) else None
        if not isinstance(spec, dict) or not spec.get("fwVersion"):
            return
        version = str(spec["fwVersion"])
        if device.updating:
            if device.update_version != version:
                device.pending_fw = spec  # applied once the running update ends
            return
        if device.busy:
            device.pending_fw = spec
            return
        if version == device.fw_version:
            if not (reported and reported.get("fwUpdateStatus") == "current" and reported.get("currentFwVersion") == version):
                device.report_soon(firmware_state(device, "current", "already up to date"))
            return
        uri = spec.get("fwPackageURI") or spec.get("fwPackageUri") or ""
        if not isinstance(uri, str) or not uri.lower().startswith("https://"):
            device.stats["fw_rejected"] += 1
            device.report_soon({"firmware": {
                "currentFwVersion": device.fw_version, "pendingFwVersion": "", "fwUpdateStatus": "error",
                "fwUpdateSubstatus": "Insecure package URI", "lastFwUpdateEndTime": now_iso(),
            }})  # fmt: skip
            return
        device.start_update("desired", version, self._run(device, version, uri))

    async def _run(self, device: DeviceBehaviour, version: str, uri: str) -> None:
        op = device.next_op()
        cfg = device.config

        async def status(value: str, substatus: str = "", **fields: Any) -> None:
            await device.report({"firmware": {"currentFwVersion": device.fw_version, "pendingFwVersion": version,
                                              "fwUpdateStatus": value, "fwUpdateSubstatus": substatus, **fields}})  # fmt: skip

        async def fail(substatus: str) -> None:
            await status("error", substatus)
            await device.report(rolled_back(device, substatus))

        if device.chance("hang", op) < cfg.hang_rate:
            await hang(device)
        await status("downloading", "0%", lastFwUpdateStartTime=now_iso(), lastFwUpdateEndTime=None)
        await asyncio.sleep(device.duration(cfg.fw_download_seconds, "download", op))
        if device.chance("download", op) < cfg.download_failure_rate:
            device.stats["fw_download_failed"] += 1
            await fail(f"download of {uri} failed (simulated)")
            return
        await status("verifying", "100%")
        await asyncio.sleep(device.duration(cfg.fw_wait_seconds, "wait", op))
        await device.wait_for_window(lambda: status("waitingForMaintenanceWindow"))
        await status("applying")
        await asyncio.sleep(device.duration(cfg.fw_apply_seconds, "apply", op))
        if device.chance("apply", op) < cfg.apply_failure_rate:
            device.stats["fw_apply_failed"] += 1
            await fail("apply failed (simulated)")
            return
        if cfg.fw_reboot_seconds > 0:
            await status("rebooting")
            device.fw_version = version
            await device.offline(device.duration(cfg.fw_reboot_seconds, "fwreboot", op))
        device.fw_version = version
        state = firmware_state(device, "current", "")
        state["firmware"]["lastFwUpdateEndTime"] = now_iso()
        await device.report(state)
        device.stats["fw_succeeded"] += 1

    def on_factory_reset(self, device: DeviceBehaviour) -> dict[str, Any]:
        """Back to the factory firmware; report it as ``current``."""
        device.fw_version = device.config.factory_firmware_version
        device.pending_fw = None
        return firmware_state(device, "current", "factory reset")


def interrupted_patch(device: DeviceBehaviour, kind: str, why: str) -> dict[str, Any]:
    """What a firmware update of ``kind`` ("method"/"desired") reports when a reboot or
    reset interrupts it."""
    if kind == "method":
        return {"iothubDM": {"firmwareUpdate": {"status": "applyFailed", "error": {"code": "Interrupted", "message": why}}}}
    return rolled_back(device, why)
