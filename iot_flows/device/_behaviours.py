"""Device-management behaviours of a simulated device (reference §7; seeds 000-003).

Everything a behaviour does is observable only through the hub: direct-method replies
and reported properties.

Direct methods
    ``reboot``
        200 ``{"message": "Reboot started"}``; offline for ``reboot_seconds``; reconnect;
        report ``iothubDM.reboot.lastReboot`` (seed 002). Interrupts a firmware update.
    ``firmwareUpdate`` — payload ``{"fwPackageUri": "https://...", "version": "2.0.0"}``
        (or the URI as a JSON string, as in the C sample). A non-https URI is answered 400,
        an update while one is running 409; otherwise 200 at once, then
        ``iothubDM.firmwareUpdate.status`` goes ``waiting`` -> ``downloading`` ->
        ``downloadComplete`` -> (``waitingForMaintenanceWindow``) -> ``applying`` ->
        ``applyComplete`` (seed 003, reference §7.3), or ends in ``downloadFailed`` /
        ``applyFailed`` with ``error: {code, message}``. On success the new version is
        reported as ``firmware.version``, ``firmware.currentFwVersion`` and
        ``iothubDM.firmwareVersion``. Without ``version`` the version is read from the URI
        (``.../fw-2.1.0.bin`` -> ``2.1.0``).
    ``factoryReset``
        200; offline for ``factory_reset_seconds``; back on the factory firmware with its
        applied configuration forgotten; report ``iothubDM.factoryReset.lastFactoryReset``;
        then desired configuration and firmware are applied again, as on a new device.
    ``lockDoor`` / ``unlockDoor``
        200 ``{"locked": true|false}``; report ``door: {locked, lastChanged}`` (seed 000).
    Any other name is answered 501.

Desired properties
    ``firmware: {fwVersion, fwPackageURI, fwPackageCheckValue}`` (reference §7.4)
        reported ``firmware: {currentFwVersion, pendingFwVersion, fwUpdateStatus,
        fwUpdateSubstatus, lastFwUpdateStartTime, lastFwUpdateEndTime}``; the status goes
        ``downloading`` -> ``verifying`` -> (``waitingForMaintenanceWindow``) ->
        ``applying`` -> (``rebooting``) -> ``current``; a failure reports ``error`` then
        ``rolledback``; an insecure URI reports ``error`` ("Insecure package URI"); the
        current version reports ``current`` ("already up to date"). A new desired
        version that arrives during an update is applied after it.
    ``telemetryConfig`` and ``config`` (any JSON object), acknowledged as in Azure's
        "configure devices with desired properties" tutorial: reported ``{..., "status":
        "Pending", "pendingConfig": {...}}``, then (``waitingForMaintenanceWindow``),
        then the applied values with ``"status": "Success"`` (or ``"Failed"`` with
        ``error``), plus ``desiredVersion``: the desired ``$version`` acknowledged.
    ``maintenanceWindow`` — the device applies firmware and configuration only inside it::

            {"start": "22:00", "end": "04:00", "timezone": "UTC", "days": ["Sat", "Sun"]}

        Daily from ``start`` (inclusive) to ``end`` (exclusive), local to ``timezone``
        (``UTC``, an IANA name such as ``Europe/Berlin``, or an offset ``+02:00``;
        default UTC); a window with ``end`` before ``start`` crosses midnight (and belongs
        to the day it starts on); ``start == end`` means the whole day; ``days``
        (optional, ``Mon``..``Sun``) restricts the days. ``null`` or no window means
        "any time". Acknowledged as reported ``maintenanceWindow`` with ``status``
        ``Success`` (or ``Invalid`` with ``error``, keeping the previous window).
        Firmware is downloaded at any time and only *applied* inside the window.

Fault injection (:class:`BehaviourConfig`), all decided by a hash of
``(seed, device id, what, operation number)``: reproducible for a seed without a
random-number generator per device. Download and apply failure rates, a hang rate
(accept the update, reply 200, then never report anything until a reboot), slow
responders (a fixed share of devices reply late and run every step slower), and
churn (driven by the fleet: devices drop their connection and come back).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from iot_flows._exceptions import HubError, TransportError
from iot_flows._window import MaintenanceWindow
from iot_flows.device._client import DesiredUpdate, DeviceClient, DeviceTwin, MethodRequest, MethodResponse

__all__ = ["BehaviourConfig", "DeviceBehaviour", "MaintenanceWindow", "chance"]

log = logging.getLogger(__name__)

CONFIG_KEYS = ("telemetryConfig", "config")
_VERSION_IN_URI = re.compile(r"(\d+(?:\.\d+)+)")


@dataclass(frozen=True, slots=True)
class BehaviourConfig:
    """Timings (seconds) and fault rates (0..1) of simulated devices."""

    reboot_seconds: float = 5.0
    factory_reset_seconds: float = 5.0
    fw_wait_seconds: float = 2.0
    fw_download_seconds: float = 4.0
    fw_apply_seconds: float = 4.0
    #: Offline time after applying firmware (0: no reboot).
    fw_reboot_seconds: float = 0.0
    config_apply_seconds: float = 1.0
    #: Random variation of every step: duration * (1 +- jitter).
    jitter: float = 0.2
    factory_firmware_version: str = "1.0.0"
    download_failure_rate: float = 0.0
    apply_failure_rate: float = 0.0
    hang_rate: float = 0.0
    config_failure_rate: float = 0.0
    slow_rate: float = 0.0
    slow_reply_seconds: float = 3.0
    slow_factor: float = 3.0
    churn_rate: float = 0.0
    churn_interval_seconds: float = 30.0
    churn_offline_seconds: float = 5.0
    #: Longest sleep between maintenance-window checks.
    window_recheck_seconds: float = 30.0
    #: Report firmware version etc. on the first connect when the twin lacks it.
    report_initial_state: bool = True

    def __post_init__(self) -> None:
        for name in (
            "download_failure_rate", "apply_failure_rate", "hang_rate", "config_failure_rate",
            "slow_rate", "churn_rate",
        ):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")


def chance(seed: int | str, device_id: str, what: str, n: int = 0) -> float:
    """A reproducible number in [0, 1) for ``(seed, device, what, n)``."""
    digest = hashlib.blake2b(f"{seed}\x1f{device_id}\x1f{what}\x1f{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


class DeviceBehaviour:
    """The device-management logic of one simulated device, driving its :class:`DeviceClient`."""

    __slots__ = (
        "client", "config", "seed", "stats", "fw_version", "slow", "_ops", "_update_task", "_update_kind",
        "_update_version", "_pending_fw", "_window", "_window_event", "_config_tasks", "_applied", "_tasks",
        "_busy", "_adopted", "_closed",
    )  # fmt: skip

    def __init__(
        self,
        client: DeviceClient,
        config: BehaviourConfig,
        *,
        seed: int | str = 0,
        stats: Counter[str] | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.seed = seed
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.fw_version = config.factory_firmware_version
        self.slow = chance(seed, client.device_id, "slow") < config.slow_rate
        self._ops = 0
        self._update_task: asyncio.Task[None] | None = None
        self._update_kind = ""
        self._update_version = ""
        self._pending_fw: dict[str, Any] | None = None
        self._window: MaintenanceWindow | None = None
        self._window_event: asyncio.Event | None = None
        self._config_tasks: dict[str, asyncio.Task[None]] | None = None
        self._applied: dict[str, dict[str, Any]] | None = None
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._busy = False  # rebooting or resetting
        self._adopted = False
        self._closed = False
        client.on_desired(self._on_desired)
        client.on_method(None, self._on_method)

    @property
    def device_id(self) -> str:
        return self.client.device_id

    @property
    def updating(self) -> bool:
        return self._update_task is not None

    # ---- plumbing -----------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
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

    def _next_op(self) -> int:
        self._ops += 1
        return self._ops

    def _chance(self, what: str, op: int) -> float:
        return chance(self.seed, self.device_id, what, op)

    def _duration(self, seconds: float, what: str, op: int) -> float:
        factor = 1.0 + self.config.jitter * (2.0 * self._chance(f"jitter:{what}", op) - 1.0)
        if self.slow:
            factor *= self.config.slow_factor
        return max(0.0, seconds * factor)

    async def _report(self, patch: dict[str, Any]) -> bool:
        """Report ``patch``, retrying across reconnects; False if it was rejected."""
        delay = 0.1
        while not self._closed:
            try:
                await self.client.patch_reported(patch)
                return True
            except HubError as exc:
                if not exc.retryable:
                    log.warning("%s: reported patch rejected: %s", self.device_id, exc)
                    return False
            except (TransportError, TimeoutError):
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        return False

    async def _offline(self, seconds: float) -> None:
        """Go offline (clean DISCONNECT), stay away ``seconds``, connect again."""
        await self.client.disconnect()
        await asyncio.sleep(seconds)
        if not self._closed:
            await self.client.connect(retry=True)

    async def drop_and_return(self, seconds: float) -> None:
        """Churn: lose the connection without DISCONNECT, come back after ``seconds``."""
        if self._busy or self._closed or not self.client.connected:
            return
        self._busy = True
        try:
            self.stats["churn"] += 1
            await self.client.disconnect(graceful=False)
            await asyncio.sleep(seconds)
            if not self._closed:
                await self.client.connect(retry=True)
        finally:
            self._busy = False

    # ---- maintenance window ---------------------------------------------------------
    async def _wait_for_window(self, report_waiting: Callable[[], Awaitable[Any]]) -> None:
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

    def _set_window(self, doc: Any) -> dict[str, Any]:
        """Apply a desired ``maintenanceWindow``; return the reported acknowledgement."""
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
        props = update.properties
        if update.complete:
            self._reconcile(props, update.reported or {}, update.version)
            return
        patch: dict[str, Any] = {}
        if "maintenanceWindow" in props:
            patch.update(self._set_window(props["maintenanceWindow"]))
        if patch:
            self._spawn(self._report(patch))
        if "firmware" in props:
            self._desired_firmware(props["firmware"], None)
        for key in CONFIG_KEYS:
            if key in props:
                self._desired_config(key, props[key], update.version, None)

    def _reconcile(self, desired: dict[str, Any], reported: dict[str, Any], version: int, *, fresh: bool = False) -> None:
        """Bring the device in line with a full twin (first connect, reconnect, reset)."""
        patch: dict[str, Any] = {}
        firmware = reported.get("firmware") if isinstance(reported.get("firmware"), dict) else None
        if not self._adopted and not fresh:
            self._adopted = True
            current = firmware.get("currentFwVersion") if firmware else None
            if isinstance(current, str) and current:
                self.fw_version = current  # the device kept its firmware across simulator runs
            elif self.config.report_initial_state:
                patch.update(self._firmware_state_patch("current", ""))
        ack = self._set_window(desired.get("maintenanceWindow"))
        if not _same_ack(ack["maintenanceWindow"], reported.get("maintenanceWindow")):
            patch.update(ack)
        if patch:
            self._spawn(self._report(patch))
        if "firmware" in desired:
            self._desired_firmware(desired["firmware"], None if fresh else firmware)
        for key in CONFIG_KEYS:
            if key in desired:
                self._desired_config(key, desired[key], version, None if fresh else reported.get(key))

    def _firmware_state_patch(self, status: str, substatus: str) -> dict[str, Any]:
        v = self.fw_version
        return {
            "firmware": {
                "version": v, "currentFwVersion": v, "pendingFwVersion": "", "fwUpdateStatus": status,
                "fwUpdateSubstatus": substatus,
            },
            "iothubDM": {"firmwareVersion": v},
        }  # fmt: skip

    def _desired_firmware(self, spec: Any, reported: dict[str, Any] | None) -> None:
        if not isinstance(spec, dict) or not spec.get("fwVersion"):
            return
        version = str(spec["fwVersion"])
        if self._update_task is not None:
            if self._update_version != version:
                self._pending_fw = spec  # applied once the running update ends
            return
        if self._busy:
            self._pending_fw = spec
            return
        if version == self.fw_version:
            if not (reported and reported.get("fwUpdateStatus") == "current" and reported.get("currentFwVersion") == version):
                self._spawn(self._report(self._firmware_state_patch("current", "already up to date")))
            return
        uri = spec.get("fwPackageURI") or spec.get("fwPackageUri") or ""
        if not isinstance(uri, str) or not uri.lower().startswith("https://"):
            self.stats["fw_rejected"] += 1
            self._spawn(self._report({"firmware": {
                "currentFwVersion": self.fw_version, "pendingFwVersion": "", "fwUpdateStatus": "error",
                "fwUpdateSubstatus": "Insecure package URI", "lastFwUpdateEndTime": now_iso(),
            }}))  # fmt: skip
            return
        self._start_update("desired", version, self._run_desired_update(version, uri))

    def _desired_config(self, key: str, value: Any, version: int, reported: Any) -> None:
        if self._config_tasks is not None and key in self._config_tasks:
            self._config_tasks.pop(key).cancel()  # a newer desired value supersedes it
        if value is None:
            if self._applied:
                self._applied.pop(key, None)
            self._spawn(self._report({key: None}))
            return
        if not isinstance(value, dict):
            self._spawn(self._report({key: {"status": "Failed", "error": "must be a JSON object", "desiredVersion": version}}))
            return
        if isinstance(reported, dict) and reported.get("status") == "Success" and _without(reported, _CONFIG_META) == value:
            self._remember_applied(key, value)
            return  # already applied (e.g. by an earlier run of the simulator)
        if self._config_tasks is None:
            self._config_tasks = {}
        task = self._spawn(self._apply_config(key, value, version))
        self._config_tasks[key] = task
        task.add_done_callback(lambda t, key=key: self._config_done(key, t))

    def _config_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._config_tasks is not None and self._config_tasks.get(key) is task:
            del self._config_tasks[key]
            if not self._config_tasks:
                self._config_tasks = None

    def _remember_applied(self, key: str, value: dict[str, Any]) -> None:
        if self._applied is None:
            self._applied = {}
        self._applied[key] = value

    async def _apply_config(self, key: str, value: dict[str, Any], version: int) -> None:
        op = self._next_op()
        await self._report({key: {"status": "Pending", "pendingConfig": value, "desiredVersion": version}})
        await self._wait_for_window(lambda: self._report({key: {"status": "waitingForMaintenanceWindow"}}))
        await asyncio.sleep(self._duration(self.config.config_apply_seconds, "config", op))
        if self._chance("config", op) < self.config.config_failure_rate:
            self.stats["config_failed"] += 1
            await self._report({key: {"status": "Failed", "error": "simulated configuration failure", "pendingConfig": None}})
            return
        previous = (self._applied or {}).get(key, {})
        removed = {name: None for name in previous if name not in value and name not in _CONFIG_META}
        await self._report({key: {**removed, **value, "status": "Success", "pendingConfig": None,
                                  "desiredVersion": version, "error": None}})  # fmt: skip
        self._remember_applied(key, value)
        self.stats["config_applied"] += 1

    # ---- firmware updates -----------------------------------------------------------
    def _start_update(self, kind: str, version: str, coro: Coroutine[Any, Any, None]) -> None:
        self._update_kind, self._update_version = kind, version
        task = self._spawn(coro)
        self._update_task = task
        task.add_done_callback(self._update_done)
        self.stats["fw_started"] += 1

    def _update_done(self, task: asyncio.Task[None]) -> None:
        if self._update_task is task:
            self._update_task = None
            self._update_kind = self._update_version = ""
        pending, self._pending_fw = self._pending_fw, None
        if pending is not None and not self._closed and not self._busy:
            self._desired_firmware(pending, None)

    async def _hang(self) -> None:
        self.stats["fw_hung"] += 1
        await asyncio.get_running_loop().create_future()  # until a reboot or the fleet stops

    async def _run_method_update(self, uri: str, version: str) -> None:
        op = self._next_op()
        cfg = self.config

        async def status(value: str, **fields: Any) -> None:
            await self._report({"iothubDM": {"firmwareUpdate": {"status": value, **fields}}})

        if self._chance("hang", op) < cfg.hang_rate:
            await self._hang()
        await status("waiting", fwPackageUri=uri, version=version, error=None, startedWaitingTime=now_iso())
        await asyncio.sleep(self._duration(cfg.fw_wait_seconds, "wait", op))
        await status("downloading", startedDownloadingTime=now_iso())
        await asyncio.sleep(self._duration(cfg.fw_download_seconds, "download", op))
        if self._chance("download", op) < cfg.download_failure_rate:
            self.stats["fw_download_failed"] += 1
            await status("downloadFailed", error={"code": "DownloadFailed", "message": f"cannot download {uri} (simulated)"})
            return
        await status("downloadComplete", downloadCompleteTime=now_iso())
        await self._wait_for_window(lambda: status("waitingForMaintenanceWindow"))
        await status("applying", startedApplyingImage=now_iso())
        await asyncio.sleep(self._duration(cfg.fw_apply_seconds, "apply", op))
        if self._chance("apply", op) < cfg.apply_failure_rate:
            self.stats["fw_apply_failed"] += 1
            await status("applyFailed", error={"code": "ApplyFailed", "message": "cannot apply image (simulated)"})
            return
        self.fw_version = version
        await self._report({
            "iothubDM": {"firmwareVersion": version, "firmwareUpdate": {"status": "applyComplete", "lastFirmwareUpdate": now_iso()}},
            "firmware": {"version": version, "currentFwVersion": version},
        })  # fmt: skip
        self.stats["fw_succeeded"] += 1
        if cfg.fw_reboot_seconds > 0:
            await self._offline(self._duration(cfg.fw_reboot_seconds, "fwreboot", op))

    async def _run_desired_update(self, version: str, uri: str) -> None:
        op = self._next_op()
        cfg = self.config

        async def status(value: str, substatus: str = "", **fields: Any) -> None:
            await self._report({"firmware": {"currentFwVersion": self.fw_version, "pendingFwVersion": version,
                                             "fwUpdateStatus": value, "fwUpdateSubstatus": substatus, **fields}})  # fmt: skip

        async def fail(substatus: str) -> None:
            await status("error", substatus)
            await self._report({"firmware": {"currentFwVersion": self.fw_version, "pendingFwVersion": "",
                                             "fwUpdateStatus": "rolledback", "fwUpdateSubstatus": substatus,
                                             "lastFwUpdateEndTime": now_iso()}})  # fmt: skip

        if self._chance("hang", op) < cfg.hang_rate:
            await self._hang()
        await status("downloading", "0%", lastFwUpdateStartTime=now_iso(), lastFwUpdateEndTime=None)
        await asyncio.sleep(self._duration(cfg.fw_download_seconds, "download", op))
        if self._chance("download", op) < cfg.download_failure_rate:
            self.stats["fw_download_failed"] += 1
            await fail(f"download of {uri} failed (simulated)")
            return
        await status("verifying", "100%")
        await asyncio.sleep(self._duration(cfg.fw_wait_seconds, "wait", op))
        await self._wait_for_window(lambda: status("waitingForMaintenanceWindow"))
        await status("applying")
        await asyncio.sleep(self._duration(cfg.fw_apply_seconds, "apply", op))
        if self._chance("apply", op) < cfg.apply_failure_rate:
            self.stats["fw_apply_failed"] += 1
            await fail("apply failed (simulated)")
            return
        if cfg.fw_reboot_seconds > 0:
            await status("rebooting")
            self.fw_version = version
            await self._offline(self._duration(cfg.fw_reboot_seconds, "fwreboot", op))
        self.fw_version = version
        state = self._firmware_state_patch("current", "")
        state["firmware"]["lastFwUpdateEndTime"] = now_iso()
        await self._report(state)
        self.stats["fw_succeeded"] += 1

    async def _interrupt_update(self, why: str) -> tuple[str, str] | None:
        """Stop a running update (reboot, reset); return what it was doing, if anything."""
        task = self._update_task
        if task is None:
            return None
        kind, version = self._update_kind, self._update_version
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        return kind, version

    async def _report_interrupted(self, interrupted: tuple[str, str] | None, why: str) -> None:
        if interrupted is None:
            return
        kind, version = interrupted
        self.stats["fw_interrupted"] += 1
        if kind == "method":
            await self._report({"iothubDM": {"firmwareUpdate": {"status": "applyFailed",
                                                                "error": {"code": "Interrupted", "message": why}}}})  # fmt: skip
        else:
            await self._report({"firmware": {"currentFwVersion": self.fw_version, "pendingFwVersion": "",
                                             "fwUpdateStatus": "rolledback", "fwUpdateSubstatus": why,
                                             "lastFwUpdateEndTime": now_iso()}})  # fmt: skip

    # ---- direct methods -------------------------------------------------------------
    def _on_method(self, request: MethodRequest) -> Any:
        handler = _METHODS.get(request.name)
        self.stats[f"method:{request.name}"] += 1
        if handler is None:
            return MethodResponse(501, {"message": f"method {request.name!r} is not implemented"})
        if self.slow:
            return self._slow_reply(handler, request)
        return handler(self, request)

    async def _slow_reply(self, handler: Callable[["DeviceBehaviour", MethodRequest], Any], request: MethodRequest) -> Any:
        await asyncio.sleep(self.config.slow_reply_seconds)
        return handler(self, request)

    def _m_reboot(self, request: MethodRequest) -> MethodResponse:
        if self._busy:
            return MethodResponse(409, {"message": "the device is already restarting"})
        self._busy = True
        self._spawn(self._reboot())
        return MethodResponse(200, {"message": "Reboot started"})

    async def _reboot(self) -> None:
        try:
            self.stats["reboots"] += 1
            interrupted = await self._interrupt_update("interrupted by reboot")
            await self._offline(self.config.reboot_seconds)
            await self._report({"iothubDM": {"reboot": {"lastReboot": now_iso()}}})
            await self._report_interrupted(interrupted, "interrupted by reboot")
        finally:
            self._busy = False
        await self._resume_desired()

    def _m_factory_reset(self, request: MethodRequest) -> MethodResponse:
        if self._busy:
            return MethodResponse(409, {"message": "the device is already restarting"})
        self._busy = True
        self._spawn(self._factory_reset())
        return MethodResponse(200, {"message": "Factory reset started"})

    async def _factory_reset(self) -> None:
        try:
            self.stats["factory_resets"] += 1
            await self._interrupt_update("interrupted by factory reset")
            for task in list((self._config_tasks or {}).values()):
                task.cancel()
            await self._offline(self.config.factory_reset_seconds)
            self.fw_version = self.config.factory_firmware_version
            self._applied = None
            self._pending_fw = None
            patch = self._firmware_state_patch("current", "factory reset")
            patch["iothubDM"]["factoryReset"] = {"lastFactoryReset": now_iso()}
            patch["iothubDM"]["firmwareUpdate"] = None
            patch.update({key: None for key in CONFIG_KEYS})
            patch["door"] = None
            await self._report(patch)
        finally:
            self._busy = False
        await self._resume_desired(fresh=True)

    async def _resume_desired(self, *, fresh: bool = False) -> None:
        """After a restart the device reads its twin again and applies what is desired."""
        if self._closed:
            return
        self._pending_fw = None  # the twin says what is wanted now
        try:
            twin: DeviceTwin = await self.client.get_twin()
        except (HubError, TransportError, TimeoutError) as exc:
            log.info("%s: cannot read the twin after restart: %s", self.device_id, exc)
            return
        desired = {k: v for k, v in twin.desired.items() if k != "$version"}
        self._reconcile(desired, {} if fresh else twin.reported, twin.desired_version, fresh=fresh)

    def _m_firmware_update(self, request: MethodRequest) -> MethodResponse:
        uri, version = _firmware_target(request.payload)
        if not uri:
            return MethodResponse(400, {"message": "the payload needs fwPackageUri"})
        if not uri.lower().startswith("https://"):
            self.stats["fw_rejected"] += 1
            return MethodResponse(400, {"message": f"fwPackageUri must be an https URI, got {uri!r}"})
        if self._update_task is not None or self._busy:
            return MethodResponse(409, {"message": "a firmware update is already running", "version": self._update_version})
        version = version or _version_from_uri(uri)
        self._start_update("method", version, self._run_method_update(uri, version))
        return MethodResponse(200, {"message": "FirmwareUpdate started", "version": version})

    def _m_lock_door(self, request: MethodRequest) -> MethodResponse:
        return self._door(True)

    def _m_unlock_door(self, request: MethodRequest) -> MethodResponse:
        return self._door(False)

    def _door(self, locked: bool) -> MethodResponse:
        self.stats["door"] += 1
        self._spawn(self._report({"door": {"locked": locked, "lastChanged": now_iso()}}))
        return MethodResponse(200, {"locked": locked})


_CONFIG_META = ("status", "pendingConfig", "desiredVersion", "error")
_METHODS: dict[str, Callable[[DeviceBehaviour, MethodRequest], Any]] = {
    "reboot": DeviceBehaviour._m_reboot,
    "firmwareUpdate": DeviceBehaviour._m_firmware_update,
    "factoryReset": DeviceBehaviour._m_factory_reset,
    "lockDoor": DeviceBehaviour._m_lock_door,
    "unlockDoor": DeviceBehaviour._m_unlock_door,
}


def _same_ack(ack: dict[str, Any] | None, reported: Any) -> bool:
    """True when ``reported`` already shows ``ack`` (``None`` values mean "absent")."""
    if ack is None or reported is None:
        return ack is None and reported is None
    return _without(reported, ()) == {k: v for k, v in ack.items() if v is not None}


def _without(doc: Any, keys: tuple[str, ...]) -> Any:
    if not isinstance(doc, dict):
        return doc
    return {k: v for k, v in doc.items() if k not in keys and not k.startswith("$")}
