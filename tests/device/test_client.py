"""DeviceClient against the real hub (real sockets): twin, methods, telemetry, failures."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

from iot_flows._exceptions import BadRequestError, ConnectError, ConnectionLostError, UnauthorizedError
from iot_flows._sas import generate_key
from iot_flows.device import Backoff, DesiredUpdate, DeviceClient, MethodRequest, MethodResponse
from iot_flows.hub._embedded import EmbeddedHub
from tests.device.conftest import Rest, eventually
from tests.support import free_port


def hub_close_link(embedded_hub: EmbeddedHub, device_id: str) -> None:
    """Close the device's connection from the hub's side (its session survives)."""

    def close() -> None:
        link = embedded_hub.hub.sessions.link(device_id)
        assert link is not None, "device not connected"
        link.close("test: network loss")

    embedded_hub.call_soon(close)


async def test_twin_roundtrip_and_typed_errors(make_client: Any, rest: Rest) -> None:
    client: DeviceClient = await make_client()
    async with client:
        twin = await client.get_twin()
        assert twin.desired_version == 1 and twin.reported_version == 1
        version = await client.patch_reported({"a": {"b": 1}})
        assert version == 2
        assert (await rest.reported(client.device_id))["a"] == {"b": 1}
        assert (await client.get_twin()).reported["a"] == {"b": 1}
        with pytest.raises(BadRequestError):  # '.' is not allowed in twin keys
            await client.patch_reported({"bad.key": 1})
        with pytest.raises(TypeError):
            await client.patch_reported([1, 2])  # type: ignore[arg-type]
        assert client.pending_requests == 0


async def test_desired_full_on_connect_then_patches(make_client: Any, rest: Rest) -> None:
    client: DeviceClient = await make_client()
    await rest.patch_desired(client.device_id, {"rate": 5})
    updates: list[DesiredUpdate] = []
    client.on_desired(updates.append)
    async with client:
        assert len(updates) == 1 and updates[0].complete
        assert updates[0].properties == {"rate": 5} and updates[0].version == 2
        await rest.patch_desired(client.device_id, {"rate": 7, "mode": "eco"})
        await eventually(lambda: asyncio.sleep(0, len(updates) == 2))
        assert updates[1] == DesiredUpdate({"rate": 7, "mode": "eco"}, 3, complete=False)
        await rest.patch_desired(client.device_id, {"mode": None})
        await eventually(lambda: asyncio.sleep(0, len(updates) == 3))
        assert updates[2].properties == {"mode": None} and updates[2].version == 4
        # A stale notification (version not newer than the twin) is ignored (docs/iothub-reference.md §1.3).
        client._on_desired_patch(b'{"rate": 1, "$version": 3}')
        assert len(updates) == 3


async def test_async_desired_handlers_run_in_order(make_client: Any, rest: Rest) -> None:
    client: DeviceClient = await make_client()
    seen: list[int] = []

    async def handler(update: DesiredUpdate) -> None:
        await asyncio.sleep(0.05 if update.version % 2 else 0)
        seen.append(update.version)

    client.on_desired(handler)
    async with client:
        for i in range(4):
            await rest.patch_desired(client.device_id, {"n": i})
        await eventually(lambda: asyncio.sleep(0, len(seen) == 5))
        assert seen == [1, 2, 3, 4, 5]


async def test_direct_methods(make_client: Any, rest: Rest) -> None:
    client: DeviceClient = await make_client()

    async def slow(request: MethodRequest) -> MethodResponse:
        await asyncio.sleep(0.05)
        return MethodResponse(202, {"slow": request.payload})

    def boom(request: MethodRequest) -> Any:
        raise RuntimeError("broken handler")

    client.on_method("echo", lambda r: (200, {"name": r.name, "payload": r.payload}))
    client.on_method("slow", slow)
    client.on_method("boom", boom)
    client.on_method("bare", lambda r: 299)
    async with client:
        d = client.device_id
        assert await rest.method(d, "echo", {"x": [1, 2]}) == (200, {"name": "echo", "payload": {"x": [1, 2]}})
        assert await rest.method(d, "echo", "text") == (200, {"name": "echo", "payload": "text"})
        assert await rest.method(d, "slow", 3) == (202, {"slow": 3})
        status, payload = await rest.method(d, "boom")
        assert status == 500 and "broken handler" in payload["message"]
        assert await rest.method(d, "bare") == (299, None)
        status, payload = await rest.method(d, "unknown")
        assert status == 501
        client.on_method(None, lambda r: (200, f"default:{r.name}"))
        assert await rest.method(d, "unknown") == (200, "default:unknown")


async def test_send_telemetry_waits_for_puback(make_client: Any, embedded_hub: EmbeddedHub) -> None:
    client: DeviceClient = await make_client()
    async with client:
        before = embedded_hub.hub.endpoint.telemetry_count
        await asyncio.gather(*(client.send_telemetry({"t": i}, properties={"kind": "test"}) for i in range(20)))
        await client.send_telemetry(b"raw")
        assert embedded_hub.hub.endpoint.telemetry_count - before == 21


async def test_refused_credentials_raise_without_retry(make_client: Any) -> None:
    client: DeviceClient = await make_client(key=generate_key())  # not the device's key
    started = time.monotonic()
    with pytest.raises(UnauthorizedError, match="CONNACK 5"):
        await client.connect(retry=True)
    assert time.monotonic() - started < 3
    assert not client.connected
    with pytest.raises(UnauthorizedError):
        await client.get_twin()  # the fatal error, at once


async def test_unreachable_hub_is_a_connect_error(make_client: Any) -> None:
    client: DeviceClient = await make_client(port=free_port())
    with pytest.raises(ConnectError):
        await client.connect()
    with pytest.raises(ConnectionLostError):
        await client.get_twin()  # not connected, and not reconnecting


async def test_pending_requests_fail_when_the_connection_drops(make_client: Any, embedded_hub: EmbeddedHub) -> None:
    client: DeviceClient = await make_client(backoff=Backoff(initial=0.2, maximum=0.5))
    async with client:
        # Make the hub stop answering twin requests (no subscription, no response)...
        conn = client._conn
        assert conn is not None and conn._paho is not None
        conn._paho.unsubscribe("$iothub/twin/res/#")
        await asyncio.sleep(0.1)
        pending = [asyncio.create_task(client.get_twin(timeout=30)) for _ in range(3)]
        await eventually(lambda: asyncio.sleep(0, client.pending_requests == 3))
        started = time.monotonic()
        hub_close_link(embedded_hub, client.device_id)  # ...then lose the connection.
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, ConnectionLostError) for r in results), results
        assert time.monotonic() - started < 2
        assert client.pending_requests == 0
        await client.wait_connected(10)  # and it comes back (re-subscribing)
        assert client.reconnects == 1
        assert (await client.get_twin()).desired_version >= 1


async def test_desired_change_while_offline_arrives_after_reconnect(
    make_client: Any, rest: Rest, embedded_hub: EmbeddedHub
) -> None:
    client: DeviceClient = await make_client(backoff=Backoff(initial=1.0, maximum=1.0, jitter=0.0))
    updates: list[DesiredUpdate] = []
    states: list[bool] = []
    client.on_desired(updates.append)
    client.on_connection_change(states.append)
    async with client:
        await rest.patch_desired(client.device_id, {"online": 1})
        await eventually(lambda: asyncio.sleep(0, len(updates) == 2))
        hub_close_link(embedded_hub, client.device_id)
        await eventually(lambda: asyncio.sleep(0, not client.connected))
        # Made while the device is offline: IoT Hub does not queue this notification.
        await rest.patch_desired(client.device_id, {"offline": 1})
        await client.wait_connected(10)
        assert states == [True, False, True]
        assert [u.version for u in updates] == [1, 2, 3]
        full = updates[-1]
        assert full.complete and full.properties == {"online": 1, "offline": 1}
        # Later patches keep flowing, once each.
        await rest.patch_desired(client.device_id, {"after": 1})
        await eventually(lambda: asyncio.sleep(0, len(updates) == 4))
        await asyncio.sleep(0.1)
        assert [u.version for u in updates] == [1, 2, 3, 4]


async def test_explicit_disconnect_and_connect_fetches_missed_changes(make_client: Any, rest: Rest) -> None:
    client: DeviceClient = await make_client()
    updates: list[DesiredUpdate] = []
    client.on_desired(updates.append)
    await client.connect()
    await client.disconnect()
    await rest.patch_desired(client.device_id, {"x": 1})
    await client.connect()
    assert [(u.version, u.complete) for u in updates] == [(1, True), (2, True)]
    await client.connect()  # idempotent while connected
    await client.disconnect()


async def test_sas_token_is_renewed_before_expiry(make_client: Any, rest: Rest) -> None:
    client: DeviceClient = await make_client(token_ttl=3)
    states: list[bool] = []
    client.on_connection_change(states.append)
    async with client:
        first_expiry = client.token_expiry
        versions = []
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:  # requests keep working across renewals
            versions.append(await client.patch_reported({"tick": len(versions)}))
            await asyncio.sleep(0.05)
        assert client.token_renewals >= 2
        assert client.token_expiry > first_expiry
        assert client.reconnects == 0  # renewed on time, never dropped by the hub
        assert states == [True]  # renewal is not reported as going offline
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        assert (await rest.device(client.device_id))["connectionState"] == "Connected"


async def test_tls_connection(tls_hub: tuple[EmbeddedHub, Any]) -> None:
    hub, ca_file = tls_hub
    record = hub.call(functools.partial(hub.hub.registry.put, "tls-dev", {}, if_match=None))
    cs = f"HostName={hub.hub.settings.hostname};DeviceId=tls-dev;SharedAccessKey={record.primary_key}"
    client = DeviceClient(cs, host="127.0.0.1", port=hub.hub.mqtts_port, ca_file=str(ca_file), connect_timeout=5)
    async with client:
        assert (await client.get_twin()).desired_version == 1
        assert await client.patch_reported({"secure": True}) == 2
    wrong_name = DeviceClient(
        cs, host="127.0.0.1", port=hub.hub.mqtts_port, ca_file=str(ca_file), server_hostname="not-the-hub", connect_timeout=5
    )
    with pytest.raises(ConnectError, match="TLS"):
        await wrong_name.connect()
    untrusted = DeviceClient(cs, host="127.0.0.1", port=hub.hub.mqtts_port, tls=True, connect_timeout=5)
    with pytest.raises(ConnectError, match="TLS"):
        await untrusted.connect()


def test_connection_string_validation() -> None:
    with pytest.raises(ValueError, match="DeviceId"):
        DeviceClient("HostName=h;SharedAccessKeyName=owner;SharedAccessKey=" + generate_key())
    with pytest.raises(ValueError):
        DeviceClient("HostName=h;DeviceId=d")
