"""Fixtures for reliability tests: a hub of their own (its clock may be replaced)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.conftest import BACKENDS
from tests.support import Service


@pytest.fixture(params=BACKENDS)
def store_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], str]:
    """Factory of fresh stores on every backend (``TEST_STORE_BACKENDS``), for the
    reliability tests that must hold on PostgreSQL too; ``.backend`` names it."""
    counter = itertools.count(1)
    backend = str(request.param)

    def make() -> str:
        if backend == "postgresql":
            cluster = request.getfixturevalue("pg_cluster")
            return str(cluster.create_database(f"rel_{os.getpid()}_{next(counter)}_{id(make)}"))
        return str(tmp_path_factory.mktemp("rel") / "hub.db")

    make.backend = backend  # type: ignore[attr-defined]
    return make


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
