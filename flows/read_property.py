"""Entrypoint: read one reported property from each selected device (seed 001).

Deployments point here (``flows/read_property.py:read_device_property``, see
``deployments/prefect.yaml``); the flow itself lives in
``iot_flows.flows.configuration``. Run it once from the repo root with::

    .venv/bin/python flows/read_property.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.configuration import PropertyReadRequest, read_device_property

__all__ = ["read_device_property"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = PropertyReadRequest(path="firmware.currentFwVersion", query_condition="tags.building = '43'")
    for device_id, value in asyncio.run(read_device_property(request, connection)).items():
        print(device_id, value)
