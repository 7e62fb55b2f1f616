"""CONNECT, sessions, keep-alive and protocol violations on the hub's MQTT endpoint."""

from __future__ import annotations

import socket
import time

import pytest

from iot_flows._sas import generate_sas_token
from iot_flows.mqtt import Connect, PacketReader, Publish, encode
from tests.support import Device, wait_until

NOT_AUTHORIZED = 135  # paho's reason code for CONNACK 5 on MQTT 3.1.1


def _dev(hub, device_id, key=None, **kw):
    return Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, device_id, key, **kw)


@pytest.fixture
def hub(embedded_hub):
    return embedded_hub.hub


def _raw_connect(hub, device_id, key, keep_alive=60) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", hub.mqtt_port), timeout=5)
    password = generate_sas_token(f"{hub.settings.hostname}/devices/{device_id}", key).encode()
    sock.sendall(encode(Connect(client_id=device_id, username=f"{hub.settings.hostname}/{device_id}/?api-version=2021-04-12",
                                password=password, clean_session=False, keep_alive=keep_alive)))
    reader = PacketReader()
    packets = reader.feed(sock.recv(4))
    assert packets and packets[0].return_code == 0
    return sock


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(1024)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_valid_device_connects_and_is_marked_connected(devices, service):
    dev = devices()
    twin = service.request("GET", f"/twins/{dev.device_id}").json()
    assert twin["connectionState"] == "Connected"
    dev.disconnect()
    wait_until(lambda: service.request("GET", f"/twins/{dev.device_id}").json()["connectionState"] == "Disconnected")


@pytest.mark.parametrize("problem", ["wrong_key", "expired", "unknown_device", "other_devices_token", "bad_username", "no_password"])
def test_bad_credentials_get_connack_not_authorized(hub, service, problem):
    other = service.create_device()
    target = service.create_device()
    target_key = target["authentication"]["symmetricKey"]["primaryKey"]
    device_id = target["deviceId"]
    kw: dict = {}
    if problem == "wrong_key":
        kw["key"] = other["authentication"]["symmetricKey"]["primaryKey"]
    elif problem == "expired":
        kw["password"] = generate_sas_token(f"{hub.settings.hostname}/devices/{device_id}", target_key, expiry=int(time.time()) - 10)
    elif problem == "unknown_device":
        device_id = "never-registered"
        kw["key"] = target_key
    elif problem == "other_devices_token":
        # A valid token for `other`, presented with `target`'s client id.
        other_key = other["authentication"]["symmetricKey"]["primaryKey"]
        kw["password"] = generate_sas_token(f"{hub.settings.hostname}/devices/{other['deviceId']}", other_key)
    elif problem == "bad_username":
        kw["key"] = target_key
        kw["username"] = f"{hub.settings.hostname}/somebody-else/?api-version=2021-04-12"
    elif problem == "no_password":
        kw["password"] = ""
    dev = _dev(hub, device_id, kw.pop("key", None), **kw)
    assert dev.connect() == NOT_AUTHORIZED
    assert dev.disconnected.wait(5)
    dev.client.loop_stop()


def test_disabled_device_is_refused_and_disabling_drops_connection(hub, service, devices):
    dev = devices()
    record = service.request("GET", f"/devices/{dev.device_id}").json()
    r = service.request("PUT", f"/devices/{dev.device_id}", json_body={**record, "status": "disabled"},
                        headers={"If-Match": f'"{record["etag"]}"'})
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    assert dev.disconnected.wait(5), "disabling a device must drop its connection"
    again = _dev(hub, dev.device_id, dev.key)
    assert again.connect() == NOT_AUTHORIZED
    again.client.loop_stop()


def test_new_connection_for_same_identity_drops_the_old_one(hub, devices):
    first = devices()
    second = _dev(hub, first.device_id, first.key)
    assert second.connect() == 0
    assert first.disconnected.wait(5)
    assert second.connected.is_set()
    status, _ = second.get_twin()  # the session (subscriptions) carried over
    assert status == 200
    second.disconnect()


def test_persistent_session_keeps_subscriptions_across_reconnect(hub, devices, service):
    dev = devices()
    dev.disconnect()
    again = _dev(hub, dev.device_id, dev.key, clean_session=False)
    assert again.connect() == 0
    assert again.session_present is True
    # No SUBSCRIBE this time: the Node SDK relies on the hub keeping them.
    service.request("PATCH", f"/twins/{dev.device_id}", json_body={"properties": {"desired": {"x": 1}}})
    msg = again.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"))
    assert b'"x":1' in msg.payload
    again.disconnect()


def test_clean_session_drops_subscriptions(hub, devices, service):
    dev = devices()
    dev.disconnect()
    again = _dev(hub, dev.device_id, dev.key, clean_session=True)
    assert again.connect() == 0 and again.session_present is False
    service.request("PATCH", f"/twins/{dev.device_id}", json_body={"properties": {"desired": {"x": 2}}})
    with pytest.raises(TimeoutError):
        again.wait_message(timeout=0.5)
    again.disconnect()


def test_keep_alive_is_enforced_at_one_and_a_half_times(hub, service):
    record = service.create_device()
    sock = _raw_connect(hub, record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"], keep_alive=1)
    start = time.monotonic()
    assert _closed_by_peer(sock, timeout=5)
    elapsed = time.monotonic() - start
    assert 1.4 <= elapsed <= 3.0, elapsed
    sock.close()


def test_qos2_publish_closes_the_connection(hub, service):
    record = service.create_device()
    sock = _raw_connect(hub, record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"])
    sock.sendall(encode(Publish(topic=f"devices/{record['deviceId']}/messages/events/", payload=b"x", qos=2, packet_id=7)))
    assert _closed_by_peer(sock, timeout=3)
    sock.close()


def test_malformed_packet_closes_only_that_connection(hub, service, devices):
    healthy = devices()
    record = service.create_device()
    sock = _raw_connect(hub, record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"])
    sock.sendall(b"\xf0\xff\xff\xff\xff\x01garbage")
    assert _closed_by_peer(sock, timeout=3)
    sock.close()
    assert healthy.get_twin()[0] == 200


def test_garbage_before_connect_is_closed(hub):
    sock = socket.create_connection(("127.0.0.1", hub.mqtt_port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert _closed_by_peer(sock, timeout=3)
    sock.close()


def test_device_cannot_publish_as_another_device(hub, devices):
    a, b = devices(), devices()
    info = a.client.publish(f"devices/{b.device_id}/messages/events/", b"spoof", qos=1)
    assert a.disconnected.wait(5), "publishing to another device's topic must close the connection"
    assert b.get_twin()[0] == 200
    del info


def test_only_iothub_topics_may_be_subscribed(devices):
    dev = devices(subscribe=False)
    granted = dev.subscribe("$iothub/twin/res/#", "#", "devices/other/messages/devicebound/#",
                            f"devices/{dev.device_id}/messages/devicebound/#", "$iothub/methods/POST/#", qos=2)
    assert granted == [1, 128, 128, 1, 1]


def test_telemetry_qos1_gets_puback(devices, embedded_hub):
    dev = devices()
    before = embedded_hub.hub.endpoint.telemetry_count
    info = dev.client.publish(f"devices/{dev.device_id}/messages/events/%24.ct=application%2Fjson", b'{"t":21}', qos=1)
    info.wait_for_publish(5)
    assert info.is_published()
    assert embedded_hub.hub.endpoint.telemetry_count == before + 1


def test_token_expiry_disconnects_the_device(hub, service):
    record = service.create_device()
    dev = _dev(hub, record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"], token_ttl=2)
    assert dev.connect() == 0
    assert dev.disconnected.wait(6), "an expired token must end the connection"
    dev.client.loop_stop()
