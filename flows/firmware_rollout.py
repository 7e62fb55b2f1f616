"""Entrypoint: staged firmware rollout in waves, with gates and an abort threshold.

Deployments point here (``flows/firmware_rollout.py:roll_out_firmware``, see
``deployments/prefect.yaml``); the flow itself lives in ``iot_flows.flows.rollout``. Run
it once from the repo root with::

    .venv/bin/python flows/firmware_rollout.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.rollout import RolloutRequest, roll_out_firmware

__all__ = ["roll_out_firmware"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = RolloutRequest(package_uri="https://firmware.example.com/fw-2.1.0.bin", version="2.1.0",
                             waves=[1, 10, 50, 100])
    print(asyncio.run(roll_out_firmware(request, connection)).model_dump_json(indent=2))
