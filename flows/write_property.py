"""Entrypoint: write a device property and confirm the device reports it (seed 001).

Deployments point here (``flows/write_property.py:write_device_property``, see
``deployments/prefect.yaml``); the flow itself lives in
``iot_flows.flows.configuration``. Run it once from the repo root with::

    .venv/bin/python flows/write_property.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.configuration import PropertyWriteRequest, write_device_property

__all__ = ["write_device_property"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = PropertyWriteRequest(name="telemetryConfig", value={"sendFrequency": "5m"},
                                   query_condition="tags.building = '43'")
    print(asyncio.run(write_device_property(request, connection)).model_dump_json(indent=2))
