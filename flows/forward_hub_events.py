"""Entrypoint: the bundled hub's change stream as Prefect events.

Deployments point here (``flows/forward_hub_events.py:forward_hub_events``, see
``deployments/prefect.yaml``); the flow itself lives in ``iot_flows.flows.hub``. Run it
once from the repo root with::

    .venv/bin/python flows/forward_hub_events.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.hub import forward_hub_events

__all__ = ["forward_hub_events"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    print(asyncio.run(forward_hub_events(connection, duration_seconds=60)))
