"""Entrypoint: firmware update of a device or a query, step by step (seed 003).

Deployments point here (``flows/firmware_update.py:update_firmware``, see
``deployments/prefect.yaml``); the flow itself lives in
``iot_flows.flows.device_management``. Run it once from the repo root with::

    .venv/bin/python flows/firmware_update.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.device_management import FirmwareUpdateRequest, update_firmware

__all__ = ["update_firmware"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = FirmwareUpdateRequest(package_uri="https://firmware.example.com/fw-2.1.0.bin", version="2.1.0",
                                    query_condition="tags.ring = 'canary'")
    print(asyncio.run(update_firmware(request, connection)).model_dump_json(indent=2))
