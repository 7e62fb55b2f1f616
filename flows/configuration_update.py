"""Entrypoint: configuration update (desired ``config``), confirmed per device (seed 001).

Deployments point here (``flows/configuration_update.py:update_configuration``, see
``deployments/prefect.yaml``); the flow itself lives in
``iot_flows.flows.configuration``. Run it once from the repo root with::

    .venv/bin/python flows/configuration_update.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.configuration import ConfigurationRequest, update_configuration

__all__ = ["update_configuration"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = ConfigurationRequest(config={"telemetryIntervalSeconds": 60}, query_condition="tags.building = '44'")
    print(asyncio.run(update_configuration(request, connection)).model_dump_json(indent=2))
