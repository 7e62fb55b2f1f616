"""Entrypoint: fleet report, devices counted by firmware, connection state, ... (GROUP BY).

Deployments point here (``flows/fleet_report.py:fleet_report``, see
``deployments/prefect.yaml``); the flow itself lives in ``iot_flows.flows.report``. Run
it once from the repo root with::

    .venv/bin/python flows/fleet_report.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.report import FleetReportRequest, fleet_report

__all__ = ["fleet_report"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = FleetReportRequest(group_by=["properties.reported.firmware.currentFwVersion", "connectionState"])
    print(asyncio.run(fleet_report(request, connection)).model_dump_json(indent=2))
