"""The Prefect layer's retries (429 is retryable) carry a flow through ``--quota`` throttling.

A tiny twin-read limit (3/s, no queue) stands in for S1's 100/s so that the test is
short; the hub answers exactly as it does under ``--quota s1``. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from prefect import flow, unmapped

from iot_flows.blocks import HubConnection
from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.hub._quota import Operation, Quota
from iot_flows.tasks import get_twin
from tests.conftest import BACKENDS
from tests.support import Service


@pytest.fixture(scope="module", autouse=True)
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.parametrize("store", BACKENDS)
def test_flow_exceeding_the_twin_read_rate_completes_thanks_to_retries(store: str, request: pytest.FixtureRequest) -> None:
    if store == "postgresql":
        db = request.getfixturevalue("pg_cluster").create_database(f"quota_prefect_{os.getpid()}")
    else:
        db = os.path.join(tempfile.mkdtemp(prefix="quota-prefect-"), "hub.db")
    settings = HubSettings(mqtt_port=0, http_port=0, db=db, quota="s1")
    with EmbeddedHub(settings) as hub:
        hub.hub.quota = None
        svc = Service(hub.base_url, hub.connection_string())
        ids = [svc.create_device()["deviceId"] for _ in range(12)]
        svc.close()
        quota = Quota({Operation.TWIN_READ: 3}, burst_seconds=1, max_delay=0, name="tiny")
        hub.hub.quota = quota
        connection = HubConnection(connection_string=hub.connection_string(), base_url=hub.base_url)

        @flow
        def read_all(device_ids: list[str]) -> list[str]:
            futures = get_twin.map(unmapped(connection), device_ids)
            return [f.result()["deviceId"] for f in futures]

        assert sorted(read_all(ids)) == sorted(ids)
        assert quota.throttled[Operation.TWIN_READ] > 0  # the hub did refuse some reads
