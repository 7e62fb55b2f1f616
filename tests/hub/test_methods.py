"""Direct methods through REST: device outcomes are data, 404103 offline, 504101 timeout."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support import Device, error_code


def _invoke(service, device_id, **body):
    body.setdefault("methodName", "lockDoor")
    return service.request("POST", f"/twins/{device_id}/methods", json_body=body)


def test_method_round_trip_with_device_status_and_payload(devices, service):
    dev = devices()
    dev.serve_methods(lambda name, payload: (200, {"locked": True, "name": name, "echo": payload}))
    r = _invoke(service, dev.device_id, payload={"door": "front"}, responseTimeoutInSeconds=10)
    assert r.status_code == 200
    assert r.json() == {"status": 200, "payload": {"locked": True, "name": "lockDoor", "echo": {"door": "front"}}}


@pytest.mark.parametrize("device_status", [500, 404, 299])
def test_device_error_status_is_relayed_in_http_200(devices, service, device_status):
    dev = devices()
    dev.serve_methods(lambda name, payload: (device_status, {"error": "nope"}))
    r = _invoke(service, dev.device_id)
    assert r.status_code == 200 and r.json() == {"status": device_status, "payload": {"error": "nope"}}


def test_payload_forms_reach_the_device_as_json(devices, service):
    dev = devices()
    seen = []
    dev.serve_methods(lambda name, payload: (seen.append(payload), (200, None))[1])
    for payload in [None, "", "foo", {}, [1, 2]]:
        r = _invoke(service, dev.device_id, payload=payload)
        assert r.status_code == 200 and r.json() == {"status": 200, "payload": None}
    assert seen == [None, "", "foo", {}, [1, 2]]


def test_offline_device_with_zero_connect_timeout_is_404103_at_once(service):
    device_id = service.create_device()["deviceId"]
    start = time.monotonic()
    r = _invoke(service, device_id)
    assert time.monotonic() - start < 1
    assert r.status_code == 404 and error_code(r) == 404103
    assert r.headers["iothub-errorcode"] == "DeviceNotOnline"


def test_connected_but_not_subscribed_is_404103(devices, service):
    dev = devices(subscribe=False)
    dev.subscribe("$iothub/twin/res/#")
    r = _invoke(service, dev.device_id)
    assert r.status_code == 404 and error_code(r) == 404103


def test_unknown_device_is_404001(service):
    r = _invoke(service, "no-such-device")
    assert r.status_code == 404 and r.json()["Message"].startswith("ErrorCode:DeviceNotFound")


def test_connect_timeout_waits_for_the_device_to_connect_and_subscribe(embedded_hub, service):
    record = service.create_device()
    hub = embedded_hub.hub
    dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, record["deviceId"],
                 record["authentication"]["symmetricKey"]["primaryKey"])

    dev.serve_methods(lambda name, payload: (201, "late but here"))  # ready before the request can arrive

    def late_device():
        time.sleep(1.0)
        assert dev.connect() == 0
        dev.subscribe_iothub()

    t = threading.Thread(target=late_device)
    t.start()
    start = time.monotonic()
    r = _invoke(service, record["deviceId"], connectTimeoutInSeconds=10)
    t.join()
    assert r.status_code == 200 and r.json() == {"status": 201, "payload": "late but here"}
    assert 0.9 < time.monotonic() - start < 10
    dev.disconnect()


def test_connect_timeout_expires_with_404103(service):
    device_id = service.create_device()["deviceId"]
    start = time.monotonic()
    r = _invoke(service, device_id, connectTimeoutInSeconds=1)
    assert 0.9 < time.monotonic() - start < 5
    assert r.status_code == 404 and error_code(r) == 404103
    assert '"timeout": "00:00:01"' in r.json()["Message"]


def test_no_reply_is_504101_and_other_devices_cannot_answer(devices, service):
    silent, attacker = devices(), devices()
    result = {}

    def call():
        result["r"] = _invoke(service, silent.device_id, responseTimeoutInSeconds=5)

    t = threading.Thread(target=call)
    t.start()
    silent.wait_message(lambda m: m.topic.startswith("$iothub/methods/POST/lockDoor/"))
    # Another device replying with guessed request ids must not complete the call.
    for rid in range(1, 300):
        attacker.client.publish(f"$iothub/methods/res/200/?$rid={rid:x}", b'{"hijacked":true}', qos=0)
    t.join()
    r = result["r"]
    assert r.status_code == 504 and error_code(r) == 504101
    assert r.headers["iothub-errorcode"] == "GatewayTimeout"


@pytest.mark.parametrize("body", [
    {"methodName": "x", "responseTimeoutInSeconds": 4},
    {"methodName": "x", "responseTimeoutInSeconds": 301},
    {"methodName": "x", "connectTimeoutInSeconds": -1},
    {"methodName": "x", "connectTimeoutInSeconds": 301},
    {"methodName": "bad/name"},
    {"methodName": ""},
    {"payload": 1},
])
def test_invalid_method_requests_are_400(service, body):
    device_id = service.create_device()["deviceId"]
    r = service.request("POST", f"/twins/{device_id}/methods", json_body=body)
    assert r.status_code == 400, r.text
