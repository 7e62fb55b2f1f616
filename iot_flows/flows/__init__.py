"""Prefect flows for fleet operations; import them by path (``iot_flows.flows.jobs``)."""

from iot_flows.flows.configuration import read_device_property, update_configuration, write_device_property
from iot_flows.flows.device_management import factory_reset_devices, reboot_devices, update_firmware
from iot_flows.flows.hub import forward_hub_events, serve_hub
from iot_flows.flows.jobs import run_method_job, run_twin_update_job
from iot_flows.flows.report import fleet_report
from iot_flows.flows.rollout import roll_out_firmware

__all__ = [
    "factory_reset_devices",
    "fleet_report",
    "forward_hub_events",
    "read_device_property",
    "reboot_devices",
    "roll_out_firmware",
    "run_method_job",
    "run_twin_update_job",
    "serve_hub",
    "update_configuration",
    "update_firmware",
    "write_device_property",
]
