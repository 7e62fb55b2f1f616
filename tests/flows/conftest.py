"""Prefect under ``prefect_test_harness`` (once per session), a real hub and a simulated fleet."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest

from iot_flows.blocks import HubConnection
from iot_flows.device import BehaviourConfig, Fleet
from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub

#: Fast device timings so flows finish in seconds.
FAST = BehaviourConfig(reboot_seconds=0.5, factory_reset_seconds=0.5, fw_wait_seconds=0.1, fw_download_seconds=1.5,
                       fw_apply_seconds=1.5, config_apply_seconds=0.2, jitter=0.1)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Tasks are also called standalone (outside flows) in tests: their logs stay local.
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def flow_hub() -> Iterator[EmbeddedHub]:
    folder = tempfile.mkdtemp(prefix="flows-hub-")
    with EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=os.path.join(folder, "hub.db"))) as hub:
        yield hub


@pytest.fixture(scope="session")
def connection(flow_hub: EmbeddedHub) -> HubConnection:
    return HubConnection(connection_string=flow_hub.connection_string(), base_url=flow_hub.base_url)


def make_fleet(hub: EmbeddedHub, prefix: str, count: int, behaviour: BehaviourConfig = FAST, **kw) -> Fleet:
    return Fleet(hub.connection_string(), count=count, prefix=prefix, mqtt_host="127.0.0.1",
                 mqtt_port=hub.hub.mqtt_port, http_url=hub.base_url, tls=False, behaviour=behaviour, seed=7, **kw)


@pytest.fixture(scope="session")
async def fleet(flow_hub: EmbeddedHub) -> AsyncIterator[Fleet]:
    """20 healthy devices tagged building 43 (even) / 44 (odd)."""
    fleet = make_fleet(flow_hub, "flow", 20)
    await fleet.start(timeout=60)
    from iot_flows.client import HubClient

    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        for i, device_id in enumerate(fleet.device_ids()):
            await client.update_twin(device_id, {"tags": {"building": "43" if i % 2 == 0 else "44", "fleet": "flow"}})
    yield fleet
    await fleet.stop()
