"""Interop: the OFFICIAL Azure IoT Node device SDK (azure-iot-device 1.18.4 +
azure-iot-device-mqtt 1.16.4) against the hub, over MQTT/TLS with a test CA.

Nothing on the device side is hand-rolled: ``node/device.js`` uses the SDK's ``Client`` with
its ``Mqtt`` transport, and only adds ``GatewayHostName=<HostName>:<port>`` to the connection
string (the SDK's own way to reach a gateway) so that it dials our MQTTS port, not 8883.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iot_flows._sas import ConnectionString
from tests.interop.conftest import WAIT, NodeDevice
from tests.support import Service
from tests.tlsutil import make_test_pki

pytestmark = pytest.mark.interop


def device_connection_string(service: Service, device_id: str, key: str) -> str:
    """The device connection string on the hub's own (default) HostName."""
    return str(ConnectionString(host_name=service.cs.host_name, device_id=device_id, shared_access_key=key))


def new_device(service: Service) -> tuple[str, str]:
    record = service.create_device()
    return record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"]


def rest_reported(service: Service, device_id: str) -> dict[str, Any]:
    r = service.request("GET", f"/twins/{device_id}")
    assert r.status_code == 200, r.text
    reported: dict[str, Any] = r.json()["properties"]["reported"]
    return reported


def desired_roundtrip(service: Service, device: NodeDevice, device_id: str, colour: str) -> None:
    """A service desired PATCH reaches the SDK's 'properties.desired' listener."""
    r = service.request("PATCH", f"/twins/{device_id}", json_body={"properties": {"desired": {"colour": colour}}})
    assert r.status_code == 200, r.text
    version = r.json()["properties"]["desired"]["$version"]
    patch = device.wait_event("desired", lambda e: (e.get("patch") or {}).get("colour") == colour)["patch"]
    assert patch["$version"] == version, f"{patch} vs REST $version {version}{device.diagnostics()}"


def method_roundtrip(service: Service, device: NodeDevice, device_id: str) -> None:
    """A direct method reaches the SDK's onDeviceMethod handler; its answer reaches the service."""
    r = service.request(
        "POST",
        f"/twins/{device_id}/methods",
        json_body={
            "methodName": "lockDoor",
            "payload": {"door": "front"},
            "responseTimeoutInSeconds": 30,
            "connectTimeoutInSeconds": 10,
        },
        timeout=45,
    )
    assert r.status_code == 200, f"{r.status_code} {r.text}{device.diagnostics()}"
    method = device.wait_event("method")
    assert method["name"] == "lockDoor", method
    assert method["payload"] == {"door": "front"}, method
    assert method["response"]["door"] == "front", method
    assert r.json() == {"status": 200, "payload": method["response"]}, f"{r.text}{device.diagnostics()}"


def wait_connection_state(service: Service, device_id: str, expected: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        state = service.request("GET", f"/devices/{device_id}").json().get("connectionState")
        if state == expected:
            return
        assert time.monotonic() < deadline, f"connectionState is {state!r}, expected {expected!r}"
        time.sleep(0.05)


def test_twin_reported_desired_and_method_roundtrip(
    tls_service: Service, node_device: Callable[..., NodeDevice]
) -> None:
    device_id, key = new_device(tls_service)
    device = node_device(device_connection_string(tls_service, device_id, key))

    # Connect over TLS (CA-verified, hostname localhost) and read the twin.
    device.wait_event("connected")
    twin = device.wait_event("twin")["twin"]
    assert twin["desired"] == {"$version": 1}, f"fresh twin: {twin}{device.diagnostics()}"
    assert "interop" not in twin["reported"], twin

    # Reported patch: the SDK got its 204, and REST shows the value right away.
    sent = device.wait_event("reported-ok")["reported"]["interop"]
    assert sent["node"] is True
    reported = rest_reported(tls_service, device_id)
    assert reported.get("interop") == sent, f"REST twin reported: {reported}{device.diagnostics()}"

    desired_roundtrip(tls_service, device, device_id, "blue")
    method_roundtrip(tls_service, device, device_id)

    # The script has seen everything it waits for: it closes the client and exits 0.
    device.wait_event("done")
    assert device.wait_exit() == 0, device.diagnostics()
    wait_connection_state(tls_service, device_id, "Disconnected")


def test_sas_renewal_keeps_the_session(tls_service: Service, node_device: Callable[..., NodeDevice]) -> None:
    """SAS renewal is DISCONNECT + CONNECT (clean=false) and the SDK never re-subscribes:
    twin responses, desired patches and method requests must keep arriving afterwards."""
    device_id, key = new_device(tls_service)
    device = node_device(
        device_connection_string(tls_service, device_id, key), INTEROP_TOKEN_TTL_S="6", INTEROP_TOKEN_MARGIN_S="4"
    )  # a fresh token (and a reconnect) every 2 s

    device.wait_event("reported-ok")
    device.wait_event("renewal-reported", lambda e: e["count"] >= 2)
    reported = rest_reported(tls_service, device_id)
    assert reported["interop"]["renewals"] >= 2, reported
    assert reported["interop"]["node"] is True, f"reported patches must deep-merge: {reported}"
    assert not [e for e in device.seen if e["event"] == "disconnect"], device.diagnostics()

    desired_roundtrip(tls_service, device, device_id, "green")
    method_roundtrip(tls_service, device, device_id)
    device.wait_event("done")
    assert device.wait_exit() == 0, device.diagnostics()


@pytest.mark.parametrize("case", ["wrong-key", "other-devices-key"])
def test_bad_credentials_fail_fast(case: str, tls_service: Service, node_device: Callable[..., NodeDevice]) -> None:
    """A refused CONNECT (CONNACK 4/5) makes the SDK's open() fail with UnauthorizedError at once.

    Had the hub dropped the socket instead, the SDK would see a transient NotConnectedError
    and keep retrying for minutes.
    """
    victim_id, victim_key = new_device(tls_service)
    if case == "wrong-key":
        key = base64.b64encode(secrets.token_bytes(32)).decode()
    else:  # device A's valid key, presented as device B
        key = new_device(tls_service)[1]
    assert key != victim_key

    started = time.monotonic()
    device = node_device(device_connection_string(tls_service, victim_id, key), mode="connect")
    event = device.wait_event("open-error", timeout=20)
    assert time.monotonic() - started < 20
    assert event["name"] == "UnauthorizedError", f"{event}{device.diagnostics()}"
    # mqtt.js words a CONNACK refusal "Connection refused: ..." (not a TLS or socket error).
    assert "Connection refused" in event["message"], f"{event}{device.diagnostics()}"
    assert device.wait_exit() == 3, device.diagnostics()
    assert not [e for e in device.seen if e["event"] == "connected"], device.diagnostics()
    wait_connection_state(tls_service, victim_id, "Disconnected")


def test_sdk_verifies_the_hub_certificate(
    tls_service: Service, node_device: Callable[..., NodeDevice], tmp_path: Path
) -> None:
    """Control for the tests above: the SDK really checks the hub's certificate against the CA
    it is given (an unrelated CA fails the handshake), so their TLS is not vacuous."""
    device_id, key = new_device(tls_service)
    stranger = make_test_pki(tmp_path / "other-ca")
    device = node_device(device_connection_string(tls_service, device_id, key), mode="connect", INTEROP_CA_FILE=str(stranger.ca_cert))
    event = device.wait_event("open-error", timeout=20)
    assert "certificate" in event["message"], f"{event}{device.diagnostics()}"
    assert device.wait_exit() == 3, device.diagnostics()


def test_plug_and_play_model_id_becomes_the_twins_model_id(
    tls_service: Service, node_device: Callable[..., NodeDevice]
) -> None:
    """The Node SDK announces ``&model-id=<dtmi>`` (not URL-encoded) in its CONNECT username;
    the twin's ``modelId`` shows it and a query finds the device by it (issue 16 item 15)."""
    model = "dtmi:com:example:Thermostat;1"
    device_id, key = new_device(tls_service)
    device = node_device(device_connection_string(tls_service, device_id, key), mode="connect", INTEROP_MODEL_ID=model)
    device.wait_event("connected")
    assert device.wait_exit() == 0, device.diagnostics()
    assert tls_service.request("GET", f"/twins/{device_id}").json()["modelId"] == model
    found = tls_service.request("POST", "/devices/query", json_body={
        "query": f"SELECT * FROM devices WHERE modelId = '{model}' AND deviceId = '{device_id}'"}).json()
    assert [t["deviceId"] for t in found] == [device_id]
