"""The seed scenarios as calls of the library flows, with what each must achieve.

Each :class:`Scenario` names the flow, builds its request for a :class:`FleetLayout`,
says how many devices it must reach, and reads ``(devices, succeeded, failed)`` from the
flow's result (or from the ``summary`` a named failure carries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iot_flows.demo._env import FleetLayout
from iot_flows.demo._rollout import check_rollout, demo_rollout, describe_rollout
from iot_flows.flows.configuration import (
    ConfigurationRequest,
    PropertyReadRequest,
    PropertyWriteRequest,
    read_device_property,
    update_configuration,
    write_device_property,
)
from iot_flows.flows.device_management import (
    FirmwareUpdateRequest,
    RebootRequest,
    factory_reset_devices,
    reboot_devices,
    update_firmware,
)
from iot_flows.flows.jobs import MethodJobRequest, TwinUpdateJobRequest, run_method_job, run_twin_update_job
from iot_flows.flows.report import FleetReportRequest, fleet_report
from iot_flows.flows.rollout import HealthGate, RolloutRequest

__all__ = ["Counts", "Scenario", "scenarios"]

#: ``(devices, succeeded, failed)``
Counts = tuple[int, int, int]

POLL = 0.5
FIRMWARE = "2.1.0"
ROLLOUT = "2.2.0"
SEND_FREQUENCY = "5m"
B43 = "tags.building = '43'"
B44 = "tags.building = '44'"


@dataclass(frozen=True)
class Scenario:
    """One demo scenario: a flow, its request, and the device counts its result must show."""
    key: str
    title: str
    seed: str
    flow: Any
    request: Any
    expected_devices: int
    counts: Callable[[Any], Counts]
    #: Extra check of the result beyond the counts: an error message, or None when fine.
    check: Callable[[Any], str | None] = lambda result: None
    #: Scenarios whose effect the counts and check expect (``--only`` without them: state and devices only).
    needs: tuple[str, ...] = ()
    #: Extra lines the demo prints under the scenario's line (None: none).
    describe: Callable[[Any], list[str]] | None = None


def _job(summary: Any) -> Counts:
    return summary.device_count, summary.succeeded, summary.failed + summary.canceled


def _confirmed(result: Any) -> Counts:
    n = result.job.device_count
    return n, len(result.confirmed), n - len(result.confirmed)


def _firmware(result: Any) -> Counts:
    return result.job.device_count, len(result.updated), len(result.failed) + len(result.timed_out)


def _rollout(result: Any) -> Counts:
    updated = sum(w.updated for w in result.waves) + result.already_current
    failed = sum(len(w.failed) + len(w.rejected) + len(w.timed_out) for w in result.waves)
    return result.targets + result.already_current, updated, failed


def _written(result: Any) -> Counts:
    return result.job.device_count, len(result.confirmed), len(result.failed) + len(result.not_confirmed)


def _read(values: dict[str, Any]) -> Counts:
    ok = sum(1 for v in values.values() if v == SEND_FREQUENCY)
    return len(values), ok, len(values) - ok


def _report(report: Any) -> Counts:
    return report.total_devices, report.total_devices, 0


def scenarios(layout: FleetLayout) -> list[Scenario]:
    """Every seed scenario over ``layout``, in the order the demo runs them."""
    first = layout.device_id(0)
    rings = "tags.ring IN ['canary', 'wave1']"
    b43, b44 = layout.size("43"), layout.size("44")

    def report_check(report: Any) -> str | None:
        by_building = report.groups.get("tags.building", {})
        if by_building != {"43": b43, "44": b44}:
            return f"devices by building {by_building}, expected 43: {b43}, 44: {b44}"
        versions = report.groups.get("properties.reported.firmware.currentFwVersion", {})
        expected = {FIRMWARE: layout.size("43", ("canary", "wave1")), ROLLOUT: b44}
        wrong = {v: versions.get(v, 0) for v, n in expected.items() if versions.get(v, 0) != n}
        return f"devices by firmware {wrong}, expected {expected}" if wrong else None

    return [
        Scenario(
            "lock-doors", "lockDoor method job on building 43", "000", run_method_job,
            MethodJobRequest(method_name="lockDoor", payload={"door": "front"}, query_condition=B43,
                             response_timeout_seconds=30, poll_interval_seconds=POLL),
            b43, _job,
        ),
        Scenario(
            "building-floor", "desired Building/Floor twin-update job on building 43", "000", run_twin_update_job,
            TwinUpdateJobRequest(query_condition=B43, desired={"Building": "43", "Floor": "3"}, poll_interval_seconds=POLL),
            b43, _job,
        ),
        Scenario(
            "reboot", "reboot ring wave1 and confirm lastReboot", "002", reboot_devices,
            RebootRequest(query_condition="tags.ring = 'wave1'", confirm_timeout_seconds=120, poll_interval_seconds=POLL),
            layout.size(rings=("wave1",)), _confirmed,
        ),
        Scenario(
            "factory-reset", f"factory reset {first} and confirm", "001", factory_reset_devices,
            RebootRequest(query_condition=f"deviceId = '{first}'", confirm_timeout_seconds=120, poll_interval_seconds=POLL),
            1, _confirmed,
        ),
        Scenario(
            # Building 43 only: building 44's downloads fail on purpose (the rollout's retries heal them).
            "firmware", f"firmware {FIRMWARE} on rings canary + wave1 of building 43", "003", update_firmware,
            FirmwareUpdateRequest(package_uri=f"https://firmware.example.com/fw-{FIRMWARE}.bin", version=FIRMWARE,
                                  query_condition=f"{B43} AND {rings}", step_timeout_seconds=180,
                                  poll_interval_seconds=POLL),
            layout.size("43", ("canary", "wave1")), _firmware,
        ),
        Scenario(
            "rollout", f"staged rollout {ROLLOUT} on building 44 (waves 1/10/50/100 %, 10 % downloads fail)", "003",
            demo_rollout,
            RolloutRequest(package_uri=f"https://firmware.example.com/fw-{ROLLOUT}.bin", version=ROLLOUT,
                           target_condition=B44, waves=[1, 10, 50, 100], device_timeout_seconds=120, retries=3,
                           retry_backoff_seconds=0.5, poll_interval_seconds=1.0, rollout_id=f"demo-{ROLLOUT}",
                           health=HealthGate(condition=f"connectionState = 'Connected' AND "
                                                       f"properties.reported.firmware.currentFwVersion = '{ROLLOUT}'",
                                             hold_seconds=1, timeout_seconds=60)),
            b44, _rollout, check_rollout, describe=describe_rollout,
        ),
        Scenario(
            "configuration", "configuration update on building 44", "001", update_configuration,
            ConfigurationRequest(config={"telemetryIntervalSeconds": 30, "logLevel": "info"}, query_condition=B44,
                                 confirm_timeout_seconds=120, poll_interval_seconds=POLL),
            b44, _written,
        ),
        Scenario(
            "write-property", "write telemetryConfig on building 43", "001", write_device_property,
            PropertyWriteRequest(name="telemetryConfig", value={"sendFrequency": SEND_FREQUENCY}, query_condition=B43,
                                 confirm_timeout_seconds=120, poll_interval_seconds=POLL),
            b43, _written,
        ),
        Scenario(
            "read-property", "read telemetryConfig.sendFrequency on building 43", "001", read_device_property,
            PropertyReadRequest(path="telemetryConfig.sendFrequency", query_condition=B43),
            b43, _read, needs=("write-property",),
        ),
        Scenario(
            "fleet-report", "fleet report (GROUP BY firmware, building, ring, connection)", "-", fleet_report,
            FleetReportRequest(group_by=["properties.reported.firmware.currentFwVersion", "tags.building", "tags.ring",
                                         "connectionState"]),
            layout.count, _report, report_check, needs=("firmware", "rollout"),
        ),
    ]  # fmt: skip
