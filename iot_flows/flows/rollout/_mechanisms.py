"""How an update reaches a device and how its outcome reads: the rollout's mechanisms.

* :class:`MethodUpdate`: the ``firmwareUpdate`` direct method (docs/iothub-reference.md §7.3), then
  ``reported.iothubDM.firmwareUpdate.status`` to ``applyComplete``;
* :class:`DesiredUpdate`: the desired-property firmware pattern (docs/iothub-reference.md §7.4): a
  twin-update job writing ``desired.firmware``, then ``reported.firmware`` to
  ``fwUpdateStatus = current`` on the version;
* :class:`TemplateUpdate`: any action (a method or a desired patch) with success and
  failure predicates on reported properties (configuration rollouts).

Failure types follow AWS IoT Jobs: ``rejected`` (the device answered 4xx: never
retried), ``timed_out`` and ``failed``; a failure is *transient* (retried) for timeouts,
``downloadFailed``, an offline device and 5xx answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iot_flows.blocks import HubConnection
from iot_flows.flows._common import reported_value
from iot_flows.flows._firmware import installed_version, not_on_version_condition
from iot_flows.flows.rollout._models import RolloutRequest, UpdateTemplate
from iot_flows.tasks import create_method_job, create_twin_update_job

__all__ = ["Failure", "Mechanism", "classify_record", "mechanism_for"]

_TIMEOUT_CODES = ("GatewayTimeout", "JobTimedOut")


@dataclass(frozen=True)
class Failure:
    """Why one device did not succeed: its AWS failure type, and whether a retry may help."""

    type: str  # failed | rejected | timed_out
    transient: bool
    detail: str = ""


def classify_record(record: dict[str, Any]) -> Failure:
    """A failed ``devices.jobs`` record as a :class:`Failure` (4xx = rejected, 5xx = transient)."""
    error = record.get("error") or {}
    status = ((record.get("outcome") or {}).get("deviceMethodResponse") or {}).get("status")
    if isinstance(status, int) and 400 <= status < 500:
        return Failure("rejected", False, f"device answered {status}")
    if isinstance(status, int) and status >= 500:
        return Failure("failed", True, f"device answered {status}")
    code = str(error.get("code") or "")
    if code in _TIMEOUT_CODES:
        return Failure("timed_out", True, code)
    return Failure("failed", True, code or "job failed")  # DeviceNotOnline, throttling, ...


def _second(value: Any) -> str:
    return str(value)[:19] if value else ""


class Mechanism:
    """One way of updating: start a hub job over a condition, read each twin's verdict."""

    name = "mechanism"

    def __init__(self, request: RolloutRequest, version: str | None = None, package_uri: str | None = None) -> None:
        self.request = request
        self.version = version or request.version
        self.package_uri = package_uri or request.package_uri

    def label(self) -> str:
        """Human label of what is installed, e.g. ``firmware 1.2.0``."""
        return f"firmware {self.version}"

    def is_current(self, twin: dict[str, Any] | None) -> bool:
        """True when the twin already reports the target version."""
        return bool(installed_version(twin) == self.version)

    def pending_condition(self) -> str | None:
        """A WHERE body for devices that still need the update (None: every device)."""
        return not_on_version_condition(self.version)

    async def start(self, conn: HubConnection, job_id: str, condition: str, timeout: int) -> None:
        """Create the hub job that starts the update on the devices matching ``condition``.

        ``timeout``: the job's ``maxExecutionTimeInSeconds``. Raises the client's ``HubError`` subclasses.
        """
        raise NotImplementedError

    def check(self, twin: dict[str, Any] | None, accepted_at: str) -> bool | Failure | None:
        """True = done, a Failure, None = not yet. ``accepted_at``: the job record's start
        (older failure reports, from an earlier attempt, are ignored)."""
        raise NotImplementedError

    def step(self, twin: dict[str, Any] | None) -> Any:
        """The device's reported step (for the step timeout: no change = no progress)."""
        return None


class MethodUpdate(Mechanism):
    """Firmware update by a ``firmwareUpdate`` direct method job (Azure "Schedule jobs on multiple devices"); progress is read from ``iothubDM.firmwareUpdate``."""
    name = "method"
    STATUS = "iothubDM.firmwareUpdate"

    async def start(self, conn: HubConnection, job_id: str, condition: str, timeout: int) -> None:
        """Start a ``firmwareUpdate`` method job with ``{fwPackageUri, version}`` as payload."""
        await create_method_job(conn, job_id, "firmwareUpdate", condition,
                                {"fwPackageUri": self.package_uri, "version": self.version},
                                max_execution_time=timeout, wait_for_offline_devices=self.request.wait_for_offline_devices)  # fmt: skip

    def check(self, twin: dict[str, Any] | None, accepted_at: str) -> bool | Failure | None:
        update = reported_value(twin, self.STATUS) or {}
        status = update.get("status") if isinstance(update, dict) else None
        if self.is_current(twin) and status in ("applyComplete", None):
            return True
        if status in ("downloadFailed", "applyFailed") and _second(update.get("startedWaitingTime")) >= _second(accepted_at):
            return Failure("failed", status == "downloadFailed", status)
        return None

    def step(self, twin: dict[str, Any] | None) -> Any:
        return reported_value(twin, f"{self.STATUS}.status")


class DesiredUpdate(Mechanism):
    """Firmware update by desired properties ``firmware.{fwVersion, fwPackageURI}`` (a twin-update job)."""
    name = "desired"

    async def start(self, conn: HubConnection, job_id: str, condition: str, timeout: int) -> None:
        """Start a twin-update job writing ``desired.firmware`` on the matching devices."""
        desired = {"firmware": {"fwVersion": self.version, "fwPackageURI": self.package_uri}}
        await create_twin_update_job(conn, job_id, condition, desired=desired, max_execution_time=timeout)

    def check(self, twin: dict[str, Any] | None, accepted_at: str) -> bool | Failure | None:
        """True once ``reported.firmware.currentFwVersion`` is the version, a Failure on a failed status, else None."""
        fw = reported_value(twin, "firmware") or {}
        status = fw.get("fwUpdateStatus") if isinstance(fw, dict) else None
        if fw.get("currentFwVersion") == self.version and status in ("current", None):
            return True
        fresh = _second(fw.get("lastFwUpdateEndTime")) >= _second(accepted_at) if fw.get("lastFwUpdateEndTime") else True
        if status == "error" and "Insecure" in str(fw.get("fwUpdateSubstatus")):
            return Failure("rejected", False, str(fw.get("fwUpdateSubstatus")))
        if status in ("error", "rolledback") and fresh:
            transient = "download" in str(fw.get("fwUpdateSubstatus", "")).lower()
            return Failure("failed", transient, f"{status}: {fw.get('fwUpdateSubstatus')}")
        return None

    def step(self, twin: dict[str, Any] | None) -> Any:
        """``reported.firmware.fwUpdateStatus`` (for the step timeout)."""
        return reported_value(twin, "firmware.fwUpdateStatus")


class TemplateUpdate(Mechanism):
    """An update described by a template: a method or desired patch, and reported values that mean success."""
    name = "template"

    def __init__(self, request: RolloutRequest) -> None:
        super().__init__(request)
        assert request.template is not None
        self.template: UpdateTemplate = request.template

    def label(self) -> str:
        """``update <version>``."""
        return f"update {self.request.version}"

    def is_current(self, twin: dict[str, Any] | None) -> bool:
        """True when every success path of the template reports its expected value."""
        return all(reported_value(twin, path) == value for path, value in self.template.success.items())

    def pending_condition(self) -> str | None:
        return None  # current devices are skipped from their twins, not by the job's condition

    async def start(self, conn: HubConnection, job_id: str, condition: str, timeout: int) -> None:
        """Start the template's method job, or its twin-update job when it has no method."""
        if self.template.method:
            await create_method_job(conn, job_id, self.template.method, condition, self.template.payload,
                                    max_execution_time=timeout,
                                    wait_for_offline_devices=self.request.wait_for_offline_devices)  # fmt: skip
        else:
            await create_twin_update_job(conn, job_id, condition, desired=self.template.desired, max_execution_time=timeout)

    def check(self, twin: dict[str, Any] | None, accepted_at: str) -> bool | Failure | None:
        if self.is_current(twin):
            return True
        for path, values in self.template.failure.items():
            if reported_value(twin, path) in values:
                return Failure("failed", False, f"{path} = {reported_value(twin, path)!r}")
        return None

    def step(self, twin: dict[str, Any] | None) -> Any:
        return tuple(reported_value(twin, p) for p in (*self.template.success, *self.template.failure))


def mechanism_for(request: RolloutRequest) -> Mechanism:
    """The mechanism ``request.mechanism`` names."""
    kinds: dict[str, type[Mechanism]] = {"method": MethodUpdate, "desired": DesiredUpdate, "template": TemplateUpdate}
    return kinds[request.mechanism](request)
