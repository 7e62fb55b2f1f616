"""Entrypoint: a direct method over a twin query as one hub job (seed 000 ``lockDoor``).

Deployments point here (``flows/method_job.py:run_method_job``, see
``deployments/prefect.yaml``); the flow itself lives in ``iot_flows.flows.jobs``. Run it
once from the repo root with::

    .venv/bin/python flows/method_job.py [HUB_CONNECTION_BLOCK]

Without a block name it uses ``IOT_FLOWS_HUB_CONNECTION`` or, with neither, an embedded
hub with no devices (the flow then finds none).
"""

from __future__ import annotations

import asyncio
import sys

from iot_flows.flows.jobs import MethodJobRequest, run_method_job

__all__ = ["run_method_job"]

if __name__ == "__main__":
    connection = sys.argv[1] if len(sys.argv) > 1 else None
    request = MethodJobRequest(method_name="lockDoor", payload={"door": "front"},
                               query_condition="tags.building = '43'")
    print(asyncio.run(run_method_job(request, connection)).model_dump_json(indent=2))
