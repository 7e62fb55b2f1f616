"""Shared fixtures: one real hub per session on 127.0.0.1 (free ports, a real store).

Store backends: the hub, jobs, query and interop suites run on SQLite *and* on
PostgreSQL (a throw-away PostgreSQL 15 cluster on a free port, see ``tests/pgcluster``);
the other suites run on SQLite only. ``TEST_STORE_BACKENDS=sqlite`` (comma list) narrows
the set for a quick local run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.pgcluster import PgCluster, PostgresMissing
from tests.support import Device, Service

TESTS = Path(__file__).parent
#: Suites that run on every store backend.
BOTH_BACKENDS = ("hub", "jobs", "query", "interop", "store")
BACKENDS = tuple(b for b in os.environ.get("TEST_STORE_BACKENDS", "sqlite,postgresql").split(",") if b)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    try:
        suite = Path(str(metafunc.definition.fspath)).relative_to(TESTS).parts[0]
    except ValueError:
        suite = ""
    backends = BACKENDS if suite in BOTH_BACKENDS else ("sqlite",)
    metafunc.parametrize("backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: the store the hubs of this test use."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throw-away PostgreSQL 15 cluster for the whole session (stopped at the end)."""
    try:
        cluster = PgCluster()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def make_db(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[[], str]:
    """Factory: a fresh, empty store for one hub: a SQLite path or a PostgreSQL URL."""
    counter = itertools.count(1)

    def make() -> str:
        n = next(counter)
        if backend == "postgresql":
            cluster: PgCluster = request.getfixturevalue("pg_cluster")
            return cluster.create_database(f"hub_{os.getpid()}_{n}")
        return str(tmp_path_factory.mktemp("hub") / "hub.db")

    return make


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("IOT_FLOWS_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def embedded_hub(make_db: Callable[[], str]) -> Iterator[EmbeddedHub]:
    settings = HubSettings(mqtt_port=0, http_port=0, db=make_db())
    with EmbeddedHub(settings) as hub:
        yield hub


@pytest.fixture(scope="session")
def service(embedded_hub: EmbeddedHub) -> Iterator[Service]:
    svc = Service(embedded_hub.base_url, embedded_hub.connection_string())
    yield svc
    svc.close()


@pytest.fixture
def devices(embedded_hub: EmbeddedHub, service: Service) -> Iterator[Any]:
    """Factory: ``devices()`` registers a device and returns a connected paho Device."""
    made: list[Device] = []
    hub = embedded_hub.hub

    def make(*, connect: bool = True, subscribe: bool = True, **kwargs: Any) -> Device:
        record = service.create_device()
        key = record["authentication"]["symmetricKey"]["primaryKey"]
        dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, record["deviceId"], key, **kwargs)
        dev.key = key  # type: ignore[attr-defined]
        made.append(dev)
        if connect:
            assert dev.connect() == 0
            if subscribe:
                dev.subscribe_iothub()
        return dev

    yield make
    for dev in made:
        try:
            dev.disconnect()
        except Exception:
            pass
