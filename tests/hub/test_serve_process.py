"""``iot-flows hub serve`` as a real process: start-up, owner key, SIGTERM, and kill -9 durability."""

from __future__ import annotations

import base64
import os
import re
import socket

from tests.support import Device, HubProcess, Service, error_code

def test_default_host_name_works_for_every_device_sdk(tmp_path):
    """Issue 16 item 14: the C SDK splits HostName at the first '.' ("Tokenizer error" without
    one). The printed HostName is dotted, both parts non-empty, and resolves without DNS."""
    hub = HubProcess(tmp_path / "hub.db")
    try:
        name, dot, suffix = hub.hostname.partition(".")
        assert dot and name and suffix, hub.hostname
        assert socket.getaddrinfo(hub.hostname, hub.mqtt_port, proto=socket.IPPROTO_TCP)
        record = Service(hub.base_url, hub.connection_string).create_device("c-sdk-dev")
        key = record["authentication"]["symmetricKey"]["primaryKey"]
        # A device connects to HostName itself (no separate address), as firmware does.
        dev = Device(hub.hostname, hub.mqtt_port, hub.hostname, "c-sdk-dev", key)
        assert dev.connect() == 0
        dev.disconnect()
    finally:
        assert hub.terminate() == 0


def test_owner_key_from_env_and_clean_sigterm(make_db):
    key = base64.b64encode(os.urandom(32)).decode()
    hub = HubProcess(make_db(), env={"IOT_FLOWS_HUB_OWNER_KEY": key})
    assert hub.connection_string == f"HostName=127.0.0.1;SharedAccessKeyName=iothubowner;SharedAccessKey={key}"
    assert re.search(r"MQTT\s+: 127\.0\.0\.1:\d+", hub.output)
    dev_record = Service(hub.base_url, hub.connection_string).create_device("sigterm-dev")
    dev = Device("127.0.0.1", hub.mqtt_port, hub.hostname, "sigterm-dev", dev_record["authentication"]["symmetricKey"]["primaryKey"])
    assert dev.connect() == 0
    assert hub.terminate() == 0
    assert dev.disconnected.wait(5), "shutdown must close device connections"
    dev.client.loop_stop()


def test_generated_owner_key_is_stored_and_reused(make_db):
    db = make_db()
    first = HubProcess(db)
    cs = first.connection_string
    assert first.terminate() == 0
    second = HubProcess(db)
    assert second.connection_string == cs
    assert second.terminate() == 0


def test_acknowledged_writes_survive_kill_9(make_db):
    db = make_db()
    hub = HubProcess(db)
    svc = Service(hub.base_url, hub.connection_string)
    created = [svc.create_device(f"dur-{i}") for i in range(20)]
    for i in range(20):
        r = svc.request("PATCH", f"/twins/dur-{i}", json_body={"tags": {"n": i}, "properties": {"desired": {"d": i}}})
        assert r.status_code == 200
    key = created[0]["authentication"]["symmetricKey"]["primaryKey"]
    dev = Device("127.0.0.1", hub.mqtt_port, hub.hostname, "dur-0", key)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    acked = 0
    for i in range(50):
        status, _ = dev.patch_reported({"seq": i, f"k{i}": i})
        assert status == 204
        acked = i
    info = dev.client.publish("devices/dur-0/messages/events/", b"x", qos=1)
    info.wait_for_publish(5)
    hub.kill9()  # no shutdown, no checkpoint
    dev.client.loop_stop()
    svc.close()

    again = HubProcess(db)
    svc = Service(again.base_url, again.connection_string)
    assert again.connection_string == hub.connection_string
    for i in range(20):
        twin = svc.request("GET", f"/twins/dur-{i}").json()
        assert twin["tags"]["n"] == i and twin["properties"]["desired"]["d"] == i
        assert twin["connectionState"] == "Disconnected"
    reported = svc.request("GET", "/twins/dur-0").json()["properties"]["reported"]
    assert reported["seq"] == acked and all(reported[f"k{i}"] == i for i in range(50))
    svc.close()
    assert again.terminate() == 0


def test_stopping_with_a_direct_method_in_flight_answers_503_without_a_traceback(make_db):
    # Found by a newcomer: Ctrl-C while a method waited for a slow device gave the caller a 500
    # and printed uvicorn's "Exception in ASGI application" traceback.
    import signal
    import threading

    hub = HubProcess(make_db())
    svc = Service(hub.base_url, hub.connection_string)
    key = svc.create_device("slow-dev")["authentication"]["symmetricKey"]["primaryKey"]
    dev = Device("127.0.0.1", hub.mqtt_port, hub.hostname, "slow-dev", key)
    assert dev.connect() == 0
    dev.subscribe_iothub()  # subscribed to methods, never answers
    answers = []
    caller = threading.Thread(target=lambda: answers.append(svc.request(
        "POST", "/twins/slow-dev/methods", json_body={"methodName": "m", "responseTimeoutInSeconds": 60})))
    caller.start()
    dev.wait_message(lambda m: m.topic.startswith("$iothub/methods/POST/m/"), timeout=10)
    hub.proc.send_signal(signal.SIGINT)
    caller.join(20)
    assert answers and answers[0].status_code == 503 and error_code(answers[0]) == 503001, answers[0].text
    assert hub.proc.wait(20) == 0
    errors = hub.proc.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in errors and "Exception in ASGI application" not in errors, errors
    dev.client.loop_stop()
    svc.close()
