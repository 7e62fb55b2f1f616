"""Entrypoint: desired properties or tags over a query as one job (seed 000 Building/Floor).

Deployments point here (``flows/twin_update_job.py:run_twin_update_job``, see
``deployments/prefect.yaml``); the flow itself lives in ``iot_flows.flows.jobs``. Run it
once from the repo root with::

    .venv/bin/python flows/twin_update_job.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.jobs import TwinUpdateJobRequest, run_twin_update_job

__all__ = ["run_twin_update_job"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = TwinUpdateJobRequest(query_condition="tags.building = '43'", desired={"Building": "43", "Floor": "3"})
    print(asyncio.run(run_twin_update_job(request, connection)).model_dump_json(indent=2))
