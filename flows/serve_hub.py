"""Entrypoint: the bundled hub as a long-running Prefect flow run.

Deployments point here (``flows/serve_hub.py:serve_hub``, see
``deployments/prefect.yaml``); the flow itself lives in ``iot_flows.flows.hub``. Run it
once from the repo root with::

    .venv/bin/python flows/serve_hub.py

It serves until Ctrl-C and prints its service connection string in the flow run's log;
save that as a ``HubConnection`` block for the other flows.
"""

from __future__ import annotations

import asyncio

from iot_flows.flows.hub import HubServeRequest, serve_hub

__all__ = ["serve_hub"]

if __name__ == "__main__":
    asyncio.run(serve_hub(HubServeRequest(db="iot-flows-hub.db")))
