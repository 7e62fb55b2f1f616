"""SDK wire facts (docs/iothub-reference.md §9) that had no test yet (one test per fact; the fact is quoted).

The other facts are covered where their feature is tested; docs/azure-contract.md maps
every one of those facts to its test.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from iot_flows._sas import generate_sas_token
from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.hub._methods import parse_method_call
from iot_flows.mqtt import Connect, PacketReader, Pingreq, Pingresp, encode
from tests.support import Device, Service, wait_until
from tests.tlsutil import make_test_pki


@pytest.fixture
def hub(embedded_hub):
    return embedded_hub.hub


def _twin(service, device_id):
    return service.request("GET", f"/twins/{device_id}").json()


def _raw_connect(hub, device_id, key, *, level=4, keep_alive=60):
    sock = socket.create_connection(("127.0.0.1", hub.mqtt_port), timeout=5)
    host = hub.settings.hostname
    sock.sendall(encode(Connect(client_id=device_id, username=f"{host}/{device_id}/?api-version=2021-04-12",
                                password=generate_sas_token(f"{host}/devices/{device_id}", key).encode(),
                                clean_session=False, keep_alive=keep_alive, protocol_level=level)))
    packets = PacketReader().feed(sock.recv(4))
    return sock, packets[0].return_code


# ---- MQTT CONNECT ---------------------------------------------------------------------------
def test_protocol_level_4_with_node_keep_alive_180_is_accepted_others_refused(hub, service):
    """Fact: "protocol level 4 (3.1.1); clean=false always; keep-alive 180 s (Node) / 60 s (Python)"."""
    record = service.create_device()
    key = record["authentication"]["symmetricKey"]["primaryKey"]
    sock, code = _raw_connect(hub, record["deviceId"], key, keep_alive=180)
    assert code == 0
    sock.close()
    for level in (3, 5):
        sock, code = _raw_connect(hub, record["deviceId"], key, level=level)
        assert code == 1, level  # unacceptable protocol version
        sock.close()


def test_sr_is_compared_after_url_decoding_case_insensitively(hub, service):
    """Fact: "compare `sr` after URL-decoding, case-insensitively" (Node and Python send upper-case %2F)."""
    record = service.create_device()
    device_id, key = record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"]
    host = hub.settings.hostname
    for uri in (f"{host}/DEVICES/{device_id}", f"{host.upper()}/devices/{device_id}/"):
        dev = Device("127.0.0.1", hub.mqtt_port, host, device_id, None, password=generate_sas_token(uri, key))
        assert dev.connect() == 0, uri
        dev.disconnect()


@pytest.fixture(scope="module")
def tls_hub(tmp_path_factory):
    directory = tmp_path_factory.mktemp("facts-tls")
    pki = make_test_pki(directory)
    settings = HubSettings(mqtt_port=0, http_port=0, mqtts_port=0, db=str(directory / "hub.db"),
                           tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with EmbeddedHub(settings) as running:
        svc = Service(running.base_url, running.connection_string(), verify=ssl.create_default_context(cafile=str(pki.ca_cert)))
        yield running.hub, svc, pki
        svc.close()


@pytest.mark.parametrize("client_cert", [False, True], ids=["no-client-cert", "client-cert"])
def test_tls_handshake_completes_with_or_without_client_certificate_tls12_hostname_checked(tls_hub, client_cert):
    """Facts: "The TLS handshake must complete whether or not the client offers a certificate";
    "the Python device SDK builds a TLS 1.2 context with hostname checking; offer TLS 1.2"."""
    hub, svc, pki = tls_hub
    record = svc.create_device()
    device_id, key = record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLSv1_2)  # what azure-iot-device 2.14 builds
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(str(pki.ca_cert))
    if client_cert:
        ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))  # any certificate: it is not checked
    dev = Device(hub.settings.hostname, hub.mqtts_port, hub.settings.hostname, device_id, key)
    dev.client.tls_set_context(ctx)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    assert dev.get_twin()[0] == 200
    dev.disconnect()


# ---- subscriptions and requests -------------------------------------------------------------
def test_qos0_subscriptions_work_like_qos1(devices, service):
    """Fact: "Subscriptions arrive at QoS 0 (Node) or QoS 1 (Python)"."""
    dev = devices(subscribe=False)
    granted = dev.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#", qos=0)
    assert granted == [0, 0, 0]
    assert dev.get_twin()[0] == 200
    service.request("PATCH", f"/twins/{dev.device_id}", json_body={"properties": {"desired": {"q": 0}}})
    dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"))
    dev.serve_methods(lambda name, payload: (200, {"qos": 0}))
    r = service.request("POST", f"/twins/{dev.device_id}/methods", json_body={"methodName": "m", "payload": None})
    assert r.json() == {"status": 200, "payload": {"qos": 0}}


def test_connect_and_subscribe_do_not_change_the_etag(hub, service):
    """Fact: "Do not bump the twin etag on connect/subscribe events"."""
    record = service.create_device()
    device_id, key = record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"]
    before = _twin(service, device_id)
    dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, device_id, key)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    dev.disconnect()
    wait_until(lambda: _twin(service, device_id)["connectionState"] == "Disconnected")
    after = _twin(service, device_id)
    assert after["etag"] == before["etag"] and after["version"] == before["version"]
    r = service.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"a": 1}}, headers={"If-Match": f'"{before["etag"]}"'})
    assert r.status_code == 200


def test_desired_version_starts_at_1_and_is_the_same_everywhere(devices, service):
    """Fact: "One desired `$version` counter, starting at 1 for a new twin, shown in REST GET,
    device GET and every notification"."""
    dev = devices()
    assert _twin(service, dev.device_id)["properties"]["desired"]["$version"] == 1
    assert dev.get_twin()[1]["desired"]["$version"] == 1
    r = service.request("PATCH", f"/twins/{dev.device_id}", json_body={"properties": {"desired": {"x": 1}}})
    rest_version = r.json()["properties"]["desired"]["$version"]
    note = dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"))
    assert json.loads(note.payload)["$version"] == rest_version == 2
    assert note.topic.endswith(f"?$version={rest_version}")
    assert dev.get_twin()[1]["desired"]["$version"] == rest_version


def test_desired_null_removes_every_key_and_the_notification_names_them(devices, service):
    """Fact: "`{"properties":{"desired":null}}` ... the notification lists each removed key as null"."""
    dev = devices()
    service.request("PATCH", f"/twins/{dev.device_id}", json_body={"properties": {"desired": {"foo": 1, "bar": {"b": 2}}}})
    dev.wait_message(lambda m: "$version=2" in m.topic)
    r = service.request("PATCH", f"/twins/{dev.device_id}", json_body={"properties": {"desired": None}})
    assert r.status_code == 200
    desired = r.json()["properties"]["desired"]
    assert set(desired) == {"$metadata", "$version"}
    note = dev.wait_message(lambda m: "$version=3" in m.topic)
    assert json.loads(note.payload) == {"foo": None, "bar": None, "$version": 3}


def test_read_your_writes_after_a_desired_notification(devices, service):
    """Fact: "a device GET ... right after a desired notification shows the new desired value"."""
    dev = devices()
    for i in range(5):
        service.request("PATCH", f"/twins/{dev.device_id}", json_body={"properties": {"desired": {"n": i}}})
        dev.wait_message(lambda m, i=i: f"$version={i + 2}" in m.topic)
        assert dev.get_twin()[1]["desired"]["n"] == i


def test_concurrent_service_patches_each_notify(devices, service, embedded_hub):
    """Fact: "one [notification] per service PATCH ... concurrent service PATCHes each produce their notification"."""
    dev = devices()
    svcs = [Service(embedded_hub.base_url, embedded_hub.connection_string()) for _ in range(8)]
    threads = [threading.Thread(target=s.request, args=("PATCH", f"/twins/{dev.device_id}"),
                                kwargs={"json_body": {"properties": {"desired": {f"k{i}": i}}}})
               for i, s in enumerate(svcs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    notes = [json.loads(dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/")).payload)
             for _ in range(8)]
    assert sorted(n["$version"] for n in notes) == list(range(2, 10))
    assert {k for n in notes for k in n if k != "$version"} == {f"k{i}" for i in range(8)}
    for s in svcs:
        s.close()


def test_concurrent_reported_patches_keep_sibling_keys(devices, service):
    """Fact: "Reported patches deep-merge, and concurrent patches from one device must not lose
    each other's sibling keys. `null` deletes the key"."""
    dev = devices()
    rids = [f"c-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    for i, rid in enumerate(rids):  # all in flight at once, no waiting for answers
        dev.client.publish(f"$iothub/twin/PATCH/properties/reported/?$rid={rid}", json.dumps({"cfg": {f"k{i}": i}}), qos=1)
    answers = [dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/res/")) for _ in rids]
    assert all(a.topic.startswith("$iothub/twin/res/204/") and a.payload == b"" for a in answers)
    assert _twin(service, dev.device_id)["properties"]["reported"]["cfg"] == {f"k{i}": i for i in range(20)}
    assert dev.patch_reported({"cfg": {"k0": None}})[0] == 204
    assert "k0" not in _twin(service, dev.device_id)["properties"]["reported"]["cfg"]


# ---- methods --------------------------------------------------------------------------------
def test_method_payload_bytes_on_the_wire(devices, service):
    """Facts: "a service call without a payload sends "payload": "", which reaches the device as
    the two bytes `""`"; "Never an empty body"."""
    dev = devices()
    raw: list[bytes] = []

    def on_message(client, userdata, m):
        if m.topic.startswith("$iothub/methods/POST/"):
            raw.append(m.payload)
            rid = m.topic.split("$rid=")[1]
            client.publish(f"$iothub/methods/res/200/?$rid={rid}", b"null", qos=1)

    dev.client.on_message = on_message
    for body in ({"methodName": "m", "payload": ""}, {"methodName": "m"}, {"methodName": "m", "payload": None}):
        r = service.request("POST", f"/twins/{dev.device_id}/methods", json_body=body)
        assert r.status_code == 200 and r.json() == {"status": 200, "payload": None}, r.text
    assert raw == [b'""', b"null", b"null"]


def test_method_timeout_defaults_are_30_and_0():
    """Fact: "Without responseTimeoutInSeconds/connectTimeoutInSeconds the defaults are 30 and 0"."""
    call = parse_method_call({"methodName": "m"})
    assert (call.response_timeout, call.connect_timeout) == (30, 0)


def test_method_right_after_suback(hub, service):
    """Fact: "A method may be invoked one second after the device's SUBACK: the subscription must be live when SUBACK is sent"."""
    record = service.create_device()
    dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, record["deviceId"],
                 record["authentication"]["symmetricKey"]["primaryKey"])
    assert dev.connect() == 0
    dev.serve_methods(lambda name, payload: (200, "ok"))
    assert dev.subscribe("$iothub/methods/POST/#") == [1]
    r = service.request("POST", f"/twins/{record['deviceId']}/methods", json_body={"methodName": "m"})  # no pause at all
    assert r.json() == {"status": 200, "payload": "ok"}
    dev.disconnect()


# ---- connections ----------------------------------------------------------------------------
def test_back_to_back_reconnects_are_not_throttled(hub, service):
    """Fact: "Back-to-back connect/disconnect/connect must not be throttled"."""
    record = service.create_device()
    key = record["authentication"]["symmetricKey"]["primaryKey"]
    for _ in range(10):
        dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, record["deviceId"], key)
        assert dev.connect() == 0
        dev.disconnect()


def test_pingreq_is_answered(hub, service):
    """Fact: "Answer PINGREQ promptly (some clients use a 5 s keep-alive)"."""
    record = service.create_device()
    sock, code = _raw_connect(hub, record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"], keep_alive=5)
    assert code == 0
    reader = PacketReader()
    for _ in range(3):
        sock.sendall(encode(Pingreq()))
        sock.settimeout(4)  # well inside the 5 s keep-alive
        assert reader.feed(sock.recv(2)) == [Pingresp()]
    sock.close()


# ---- REST -----------------------------------------------------------------------------------
def test_bodies_are_parsed_only_with_a_json_content_type(service):
    """Fact: "Bodies are parsed only when `content-type` contains `application/json`"."""
    device_id = service.create_device()["deviceId"]
    body = json.dumps({"tags": {"parsed": True}}).encode()
    r = service.request("PATCH", f"/twins/{device_id}", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 200 and "parsed" not in r.json()["tags"]
    r = service.request("PATCH", f"/twins/{device_id}", content=body,
                        headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and r.json()["tags"]["parsed"] is True


def test_bulk_import_modes_compare_case_insensitively(service):
    """Fact: "`importMode` arrives as `create`, `Update`, `Delete` (compare case-insensitively)"."""
    prefix = f"case-{uuid.uuid4().hex[:8]}"
    ok = {"isSuccessful": True, "errors": [], "warnings": []}
    r = service.request("POST", "/devices", json_body=[{"id": f"{prefix}-a", "importMode": "create"}])
    assert r.status_code == 200 and r.json() == ok
    r = service.request("POST", "/devices", json_body=[{"id": f"{prefix}-a", "importMode": "Update", "status": "disabled"}])
    assert r.status_code == 200 and r.json() == ok
    assert service.request("GET", f"/devices/{prefix}-a").json()["status"] == "disabled"
    r = service.request("POST", "/devices", json_body=[{"id": f"{prefix}-a", "importMode": "Delete"}])
    assert r.status_code == 200 and r.json() == ok
    assert service.request("GET", f"/devices/{prefix}-a").status_code == 404


def test_empty_symmetric_key_object_generates_keys(service):
    """Fact: "create answers 200 and generates keys when `symmetricKey` is `{}`"."""
    device_id = f"sym-{uuid.uuid4().hex[:8]}"
    r = service.request("PUT", f"/devices/{device_id}", json_body={"deviceId": device_id,
                                                                  "authentication": {"type": "sas", "symmetricKey": {}}})
    assert r.status_code == 200
    keys = r.json()["authentication"]["symmetricKey"]
    assert keys["primaryKey"] and keys["secondaryKey"]


# ---- jobs -----------------------------------------------------------------------------------
def test_method_job_waits_briefly_for_a_late_method_subscribe(hub, service):
    """Fact: "A method job scheduled "now" may reach a device before its method SUBSCRIBE lands:
    give per-device method calls in jobs a short connect/subscribe wait"."""
    record = service.create_device()
    device_id = record["deviceId"]
    dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, device_id, record["authentication"]["symmetricKey"]["primaryKey"])
    assert dev.connect() == 0  # connected, not yet subscribed to methods
    dev.serve_methods(lambda name, payload: (200, None))
    job_id = f"late-{uuid.uuid4().hex[:8]}"
    r = service.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"deviceId = '{device_id}'",
        "startTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "cloudToDeviceMethod": {"methodName": "reboot", "responseTimeoutInSeconds": 10}, "maxExecutionTimeInSeconds": 30})
    assert r.status_code == 200
    time.sleep(0.3)
    assert dev.subscribe("$iothub/methods/POST/#") == [1]
    job = wait_until(lambda: (j := service.request("GET", f"/jobs/v2/{job_id}").json())["status"] in
                     ("completed", "failed") and j, timeout=20)
    assert job["status"] == "completed" and job["deviceJobStatistics"]["succeededCount"] == 1, job
    dev.disconnect()
