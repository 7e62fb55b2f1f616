"""Shared fixtures: one real hub per session on 127.0.0.1 (free ports, SQLite in a temp dir)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.support import Device, Service


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("IOT_FLOWS_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def embedded_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedHub]:
    db = tmp_path_factory.mktemp("hub") / "hub.db"
    settings = HubSettings(mqtt_port=0, http_port=0, db=str(db))
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
