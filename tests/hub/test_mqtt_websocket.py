"""MQTT over WebSocket on ``/$iothub/websocket`` (docs/iothub-reference.md §9.7).

Facts: "Ports are fixed by the SDKs: MQTT/TLS 8883, HTTPS 443 (and
`wss://host:443/$iothub/websocket`)"; "WebSocket upgrade (paho 1.6 client): every response
header line that contains "connection" must also contain "upgrade"; `Sec-WebSocket-Accept`
must be followed by ": " (colon and space)". The hub serves the path on its REST port.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl

import paho.mqtt.client as mqtt
import pytest

from iot_flows._sas import generate_sas_token
from tests.support import Device

WS_PATH = "/$iothub/websocket"


def _ws_device(hub, record, *, port, ca_file=None, ctx=None) -> Device:
    device_id, key = record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"]
    dev = Device(hub.settings.hostname, port, hub.settings.hostname, device_id, key)
    # Rebuild the paho client as the Python device SDK does: transport="websockets" + the IoT Hub path.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=False,
                         protocol=mqtt.MQTTv311, transport="websockets")
    client.ws_set_options(path=WS_PATH)
    client.username_pw_set(f"{hub.settings.hostname}/{device_id}/?api-version=2021-04-12",
                           generate_sas_token(f"{hub.settings.hostname}/devices/{device_id}", key))
    if ctx is not None:
        client.tls_set_context(ctx)
    client.on_connect, client.on_disconnect, client.on_message = dev._on_connect, dev._on_disconnect, dev._on_message
    dev.client = client
    return dev


def test_device_over_plain_websocket(embedded_hub, service):
    hub = embedded_hub.hub
    record = service.create_device()
    dev = _ws_device(hub, record, port=hub.http_port)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    assert dev.get_twin()[0] == 200
    assert dev.patch_reported({"over": "websocket"})[0] == 204
    assert service.request("GET", f"/twins/{record['deviceId']}").json()["properties"]["reported"]["over"] == "websocket"
    dev.serve_methods(lambda name, payload: (200, {"ws": True}))
    r = service.request("POST", f"/twins/{record['deviceId']}/methods", json_body={"methodName": "m", "payload": {}})
    assert r.json() == {"status": 200, "payload": {"ws": True}}
    service.request("PATCH", f"/twins/{record['deviceId']}", json_body={"properties": {"desired": {"d": 1}}})
    dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"))
    dev.disconnect()


def test_bad_credentials_over_websocket_get_connack_5(embedded_hub, service):
    hub = embedded_hub.hub
    record = service.create_device()
    record["authentication"]["symmetricKey"]["primaryKey"] = base64.b64encode(os.urandom(32)).decode()
    dev = _ws_device(hub, record, port=hub.http_port)
    assert dev.connect() == 135  # CONNACK 5 (not authorized), as on TCP
    dev.client.loop_stop()


def test_upgrade_response_headers_suit_paho(embedded_hub):
    """Every header line containing 'connection' also contains 'upgrade'; 'Sec-WebSocket-Accept: '."""
    hub = embedded_hub.hub
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", hub.http_port), timeout=5) as sock:
        sock.sendall((f"GET {WS_PATH} HTTP/1.1\r\nHost: {hub.settings.hostname}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1024)
            assert chunk, head
            head += chunk
    lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), lines
    for line in lines[1:]:
        if "connection" in line.lower():
            assert "upgrade" in line.lower(), line
    accept = [line for line in lines if line.lower().startswith("sec-websocket-accept")]
    assert len(accept) == 1 and accept[0].split(":", 1)[1].startswith(" "), accept
    assert any(line.lower() == "sec-websocket-protocol: mqtt" for line in lines), lines


def test_device_over_wss_with_tls12(tmp_path):
    from iot_flows.hub import HubSettings
    from iot_flows.hub._embedded import EmbeddedHub
    from tests.support import Service
    from tests.tlsutil import make_test_pki

    pki = make_test_pki(tmp_path / "pki")
    settings = HubSettings(mqtt_port=0, http_port=0, mqtts_port=0, db=str(tmp_path / "hub.db"),
                           tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with EmbeddedHub(settings) as running:
        svc = Service(running.base_url, running.connection_string(), verify=ssl.create_default_context(cafile=str(pki.ca_cert)))
        record = svc.create_device()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLSv1_2)
        ctx.verify_mode, ctx.check_hostname = ssl.CERT_REQUIRED, True
        ctx.load_verify_locations(str(pki.ca_cert))
        dev = _ws_device(running.hub, record, port=running.hub.http_port, ctx=ctx)
        assert dev.connect() == 0
        dev.subscribe_iothub()
        assert dev.patch_reported({"wss": True})[0] == 204
        dev.disconnect()
        svc.close()


def test_other_paths_do_not_upgrade(embedded_hub):
    hub = embedded_hub.hub
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x", protocol=mqtt.MQTTv311, transport="websockets")
    client.ws_set_options(path="/not/the/path")
    with pytest.raises(Exception):
        client.connect(hub.settings.hostname, hub.http_port)
