"""The hub's fast paths behave like the general ones (issue 13): method replies resolved
inline (QoS 0 and 1, with other packets in the same segment), one stored-session write per
SUBSCRIBE, bucketed method timeouts, and ``hub serve --loop uvloop``."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.support import Device, HubProcess, Service, error_code


def _invoke(service, device_id, **body):
    body.setdefault("methodName", "lockDoor")
    return service.request("POST", f"/twins/{device_id}/methods", json_body=body)


def _answer_next_request(dev: Device, qos: int, then_get_twin: bool = False) -> threading.Thread:
    """Answer the next method request with 200 at ``qos`` (optionally a twin GET right behind it)."""

    def run() -> None:
        msg = dev.wait_message(lambda m: m.topic.startswith("$iothub/methods/POST/"))
        rid = msg.topic.rsplit("$rid=", 1)[1]
        info = dev.client.publish(f"$iothub/methods/res/200/?$rid={rid}", b'{"qos":%d}' % qos, qos=qos)
        if then_get_twin:
            dev.client.publish("$iothub/twin/GET/?$rid=after-reply", b"", qos=0)
        info.wait_for_publish(5)  # QoS 1: returns once the hub's PUBACK arrived
        assert info.is_published()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("qos", [0, 1])
def test_method_reply_at_either_qos_resolves_and_qos1_is_acknowledged(devices, service, qos):
    dev = devices()
    thread = _answer_next_request(dev, qos)
    r = _invoke(service, dev.device_id, responseTimeoutInSeconds=10)
    thread.join(10)
    assert r.status_code == 200 and r.json() == {"status": 200, "payload": {"qos": qos}}


def test_a_twin_get_right_behind_a_method_reply_is_still_answered(devices, service):
    dev = devices()
    thread = _answer_next_request(dev, 0, then_get_twin=True)
    r = _invoke(service, dev.device_id, responseTimeoutInSeconds=10)
    thread.join(10)
    assert r.status_code == 200
    twin = dev.wait_message(lambda m: "$rid=after-reply" in m.topic)
    assert twin.topic.startswith("$iothub/twin/res/200/") and "reported" in json.loads(twin.payload)


def test_method_reply_with_an_encoded_rid_still_resolves(devices, service):
    """A rid the device echoes percent-encoded takes the general query parser."""
    dev = devices()

    def run() -> None:
        msg = dev.wait_message(lambda m: m.topic.startswith("$iothub/methods/POST/"))
        rid = msg.topic.rsplit("$rid=", 1)[1]
        encoded = "".join(f"%{ord(c):02X}" for c in rid)
        dev.client.publish(f"$iothub/methods/res/201/?$rid={encoded}", b"", qos=0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    r = _invoke(service, dev.device_id, responseTimeoutInSeconds=10)
    thread.join(10)
    assert r.status_code == 200 and r.json() == {"status": 201, "payload": None}


def test_unanswered_method_times_out_with_504101_close_to_its_timeout(devices, service):
    dev = devices()
    t0 = time.monotonic()
    r = _invoke(service, dev.device_id, responseTimeoutInSeconds=5)
    elapsed = time.monotonic() - t0
    assert r.status_code == 504 and error_code(r) == 504101
    assert 5 <= elapsed < 7, elapsed


def test_one_subscribe_with_several_filters_grants_each(devices):
    dev = devices(subscribe=False)
    assert dev.subscribe("$iothub/methods/POST/#", "$iothub/twin/res/#", "not/allowed") == [1, 1, 128]
    assert dev.get_twin()[0] == 200


def test_hub_serve_on_uvloop_connects_devices_and_answers_methods(make_db):
    pytest.importorskip("uvloop", reason="uvloop not installed: pip install uvloop (the `hub` extra)")
    hub = HubProcess(make_db(), args=("--loop", "uvloop"))
    try:
        service = Service(hub.base_url, hub.connection_string)
        record = service.create_device("uvloop-dev")
        dev = Device("127.0.0.1", hub.mqtt_port, hub.hostname, "uvloop-dev",
                     record["authentication"]["symmetricKey"]["primaryKey"])
        assert dev.connect() == 0
        dev.subscribe_iothub()
        dev.serve_methods(lambda name, payload: (200, {"loop": "uvloop"}))
        r = _invoke(service, "uvloop-dev", responseTimeoutInSeconds=10)
        assert r.status_code == 200 and r.json()["payload"] == {"loop": "uvloop"}
        dev.disconnect()
        service.close()
    finally:
        assert hub.terminate() == 0
