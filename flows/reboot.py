"""Entrypoint: reboot devices and confirm a newer ``lastReboot`` (seed 002).

Deployments point here (``flows/reboot.py:reboot_devices``, see
``deployments/prefect.yaml``); the flow itself lives in
``iot_flows.flows.device_management``. Run it once from the repo root with::

    .venv/bin/python flows/reboot.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.device_management import RebootRequest, reboot_devices

__all__ = ["reboot_devices"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = RebootRequest(query_condition="tags.ring = 'canary'", confirm_timeout_seconds=300)
    print(asyncio.run(reboot_devices(request, connection)).model_dump_json(indent=2))
