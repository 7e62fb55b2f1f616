"""Fixtures for reliability tests: a hub of their own (its clock may be replaced)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.support import Service


@pytest.fixture(scope="module")
def own_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedHub]:
    """A hub only this test module uses (tests here change its clock or flood it)."""
    db = tmp_path_factory.mktemp("reliability-hub") / "hub.db"
    with EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=str(db))) as hub:
        yield hub


@pytest.fixture(scope="module")
def own_service(own_hub: EmbeddedHub) -> Iterator[Service]:
    svc = Service(own_hub.base_url, own_hub.connection_string())
    yield svc
    svc.close()
