"""Fixtures for the device side: clients and small fleets against the session hub.

Every test uses its own device ids (a random prefix), because the hub is shared by
the whole session.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iot_flows.device import Backoff, BehaviourConfig, DeviceClient, Fleet
from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.support import Service
from tests.tlsutil import make_test_pki

#: Fast timings for behaviour tests.
FAST = BehaviourConfig(
    reboot_seconds=0.3,
    factory_reset_seconds=0.3,
    fw_wait_seconds=0.1,
    fw_download_seconds=0.15,
    fw_apply_seconds=0.15,
    config_apply_seconds=0.05,
    jitter=0.0,
    window_recheck_seconds=0.5,
)


def unique(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking helper (the sync REST caller) without blocking the test's loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)


class Rest:
    """Async wrappers around the session's SAS-signed REST caller."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def twin(self, device_id: str) -> dict[str, Any]:
        r = await call(self.service.request, "GET", f"/twins/{device_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def reported(self, device_id: str) -> dict[str, Any]:
        return (await self.twin(device_id))["properties"]["reported"]  # type: ignore[no-any-return]

    async def patch_desired(self, device_id: str, desired: dict[str, Any]) -> dict[str, Any]:
        r = await call(self.service.request, "PATCH", f"/twins/{device_id}", json_body={"properties": {"desired": desired}})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def method(self, device_id: str, name: str, payload: Any = None, timeout: int = 5) -> tuple[int, Any]:
        """Invoke a direct method; return (device status, payload); HTTP errors as (-http, body)."""
        body = {"methodName": name, "payload": payload, "responseTimeoutInSeconds": timeout, "connectTimeoutInSeconds": 5}
        r = await call(self.service.request, "POST", f"/twins/{device_id}/methods", json_body=body)
        if r.status_code != 200:
            return -r.status_code, r.text
        data = r.json()
        return data["status"], data["payload"]

    async def device(self, device_id: str) -> dict[str, Any]:
        r = await call(self.service.request, "GET", f"/devices/{device_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def rest(service: Service) -> Rest:
    return Rest(service)


@pytest.fixture
async def make_client(embedded_hub: EmbeddedHub, service: Service) -> AsyncIterator[Callable[..., Awaitable[DeviceClient]]]:
    """Factory: register a device and return a (not yet connected) DeviceClient."""
    made: list[DeviceClient] = []
    hub = embedded_hub.hub

    async def make(device_id: str | None = None, *, key: str | None = None, **kwargs: Any) -> DeviceClient:
        device_id = device_id or unique()
        record = await call(service.create_device, device_id)
        key = key or record["authentication"]["symmetricKey"]["primaryKey"]
        cs = f"HostName={hub.settings.hostname};DeviceId={device_id};SharedAccessKey={key}"
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", hub.mqtt_port)
        kwargs.setdefault("request_timeout", 5.0)
        kwargs.setdefault("connect_timeout", 5.0)
        client = DeviceClient(cs, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.disconnect()


@pytest.fixture
async def make_fleet(embedded_hub: EmbeddedHub) -> AsyncIterator[Callable[..., Awaitable[Fleet]]]:
    """Factory: start a small fleet (unique prefix, fast timings) against the session hub."""
    fleets: list[Fleet] = []
    hub = embedded_hub.hub

    async def make(count: int = 2, *, behaviour: BehaviourConfig = FAST, **kwargs: Any) -> Fleet:
        kwargs.setdefault("prefix", unique("sim"))
        fleet = Fleet(
            embedded_hub.connection_string(),
            count=count,
            mqtt_host="127.0.0.1",
            mqtt_port=hub.mqtt_port,
            http_url=embedded_hub.base_url,
            behaviour=behaviour,
            backoff=kwargs.pop("backoff", None) or Backoff(initial=0.1, maximum=1.0),
            **kwargs,
        )
        fleets.append(fleet)
        await fleet.start(timeout=60)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.stop()


# ---- a second hub with TLS, for the TLS test ------------------------------------------
@pytest.fixture(scope="module")
def tls_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedHub, Path]]:
    """A hub with TLS on MQTT (and HTTPS on REST); yields (hub, CA file)."""
    directory = tmp_path_factory.mktemp("tls-hub")
    pki = make_test_pki(directory)
    settings = HubSettings(
        mqtt_port=0, http_port=0, mqtts_port=0, db=str(directory / "hub.db"),
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
    )
    with EmbeddedHub(settings) as hub:
        yield hub, pki.ca_cert


class ReportedLog:
    """Every reported patch the hub committed, per device, in order (a hub listener).

    REST polling can miss short-lived states; this shows the exact sequence.
    """

    def __init__(self) -> None:
        self.patches: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, device_id: str, section: str, patch: dict[str, Any], record: Any) -> None:
        if section == "reported":
            self.patches.setdefault(device_id, []).append(patch)

    def values(self, device_id: str, *path: str) -> list[Any]:
        """The values the device reported at ``path``, in order (patches lacking it skipped)."""
        out = []
        for patch in list(self.patches.get(device_id, [])):
            node: Any = patch
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    break
                node = node[key]
            else:
                out.append(node)
        return out


@pytest.fixture(scope="session")
def reported_log(embedded_hub: EmbeddedHub) -> ReportedLog:
    log = ReportedLog()
    embedded_hub.call_soon(embedded_hub.hub.twins.add_listener, log)
    return log
