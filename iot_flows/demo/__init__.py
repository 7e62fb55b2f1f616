r"""``./scripts/demo``: every seed scenario as a Prefect flow run against a simulated fleet.

Run it with ``python -m iot_flows.demo [--devices N | --quick] [--verbose]``. It starts an
embedded hub (SQLite in a temporary folder, free ports on 127.0.0.1) and a simulated fleet
over real MQTT, tags the devices (building 43/44, rollout rings) with twin-update jobs, then
runs the library flows one after the other, passing the hub's :class:`HubConnection`
explicitly:

=====================  ======  ================================================
scenario               seed    flow
=====================  ======  ================================================
lock-doors             000     ``run_method_job`` (``lockDoor`` on building 43)
building-floor         000     ``run_twin_update_job`` (desired Building/Floor)
reboot                 002     ``reboot_devices`` (ring wave1, confirm lastReboot)
factory-reset          001     ``factory_reset_devices`` (one device)
firmware               003     ``update_firmware`` (rings canary + wave1)
rollout                003     ``roll_out_firmware`` (building 44, 4 waves: plan, retries, health gate)
configuration          001     ``update_configuration`` (building 44)
write-property         001     ``write_device_property`` (building 43)
read-property          001     ``read_device_property`` (building 43)
fleet-report           \-      ``fleet_report`` (GROUP BY)
=====================  ======  ================================================

Prefect runs in ephemeral mode unless ``PREFECT_API_URL`` points at a server, in which
case the runs appear in its UI. The exit code is 0 only when every scenario succeeded;
the fleet and the hub are stopped on success, failure, Ctrl-C and SIGTERM alike.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEMO_TAG", "QUICK_DEVICES", "DemoOptions", "launch", "run_demo"]


def __getattr__(name: str) -> Any:
    # Lazy, so ``python -m iot_flows.demo`` can set Prefect's logging options before
    # Prefect is imported (it reads them once, on import).
    if name in ("QUICK_DEVICES", "launch"):
        from iot_flows.demo import _launch

        return getattr(_launch, name)
    if name in __all__:
        from iot_flows.demo import _run

        return getattr(_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
