"""Every MQTT username form and SAS token form Azure accepts (docs/azure-contract.md).

Username (D-MQTT, docs/iothub-reference.md §9.1, docs/iothub-reference.md §2.1): ``{host}/{deviceId}``
with or without a trailing ``/``, with ``api-version``, ``DeviceClientType`` and
``model-id`` (unknown parameters ignored). SAS (D-SAS "Use a shared access policy",
docs/iothub-reference.md §3.7): a device key token, or a token signed with a policy that grants
DeviceConnect whose ``sr`` is a per-segment prefix of ``{host}/devices/{id}``.
Plug and Play: the announced ``model-id`` becomes the twin's ``modelId`` (queryable).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
import uuid

import pytest

from iot_flows._sas import generate_sas_token
from tests.support import Device

NOT_AUTHORIZED = 135  # paho's reason code for CONNACK 5 on MQTT 3.1.1
THERMOSTAT = "dtmi:com:example:Thermostat;1"


@pytest.fixture
def hub(embedded_hub):
    return embedded_hub.hub


def _new(service):
    record = service.create_device()
    return record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"]


def _connect(hub, device_id, *, username, password) -> int | None:
    dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, device_id, None,
                 username=username, password=password)
    try:
        return dev.connect()
    finally:
        dev.client.disconnect()
        dev.client.loop_stop()


def _twin(service, device_id):
    return service.request("GET", f"/twins/{device_id}").json()


# ---- usernames ----------------------------------------------------------------------------
PY_UA = urllib.parse.quote("azure-iot-device-iothub-py/2.14.0(3.11;Linux 6.1;x86_64)", safe="")
NODE_UA = urllib.parse.quote("azure-iot-device/1.18.4 (node v20; Debian; x64)", safe="")


@pytest.mark.parametrize("form", [
    "{h}/{d}",                                                             # Azure's older Python sample
    "{h}/{d}/",
    "{h}/{d}/?api-version=2021-04-12",                                      # documented form
    "{h}/{d}/?api-version=2019-10-01&DeviceClientType=" + PY_UA,            # Python device SDK 2.14
    "{h}/{d}/?api-version=2021-04-12&DeviceClientType=" + NODE_UA,          # Node device SDK
    "{h}/{d}/?api-version=2020-09-30&DeviceClientType=x&model-id=" + urllib.parse.quote(THERMOSTAT, safe=""),
    "{h}/{d}/?api-version=2021-04-12&model-id=" + THERMOSTAT + "&DeviceClientType=x",  # Node: model-id not encoded
    "{h}/{d}/?api-version=2021-04-12&unknown=1&x",                          # unknown parameters ignored
    "{h}/{d}?api-version=2021-04-12",
    "{H}/{d}/?api-version=2021-04-12",                                      # host name is case-insensitive
])
def test_username_forms_azure_accepts(hub, service, form):
    device_id, key = _new(service)
    username = form.format(h=hub.settings.hostname, H=hub.settings.hostname.upper(), d=device_id)
    password = generate_sas_token(f"{hub.settings.hostname}/devices/{device_id}", key)
    assert _connect(hub, device_id, username=username, password=password) == 0, username


@pytest.mark.parametrize("form", [
    "{h}/{other}/?api-version=2021-04-12",      # another device
    "{h}/{d}x/?api-version=2021-04-12",         # a longer id
    "{h}/{d}/module1/?api-version=2021-04-12",  # a module identity (not supported)
    "other.example.net/{d}/?api-version=2021-04-12",
    "{d}",
    "",
])
def test_username_forms_refused(hub, service, form):
    device_id, key = _new(service)
    username = form.format(h=hub.settings.hostname, d=device_id, other=f"x{uuid.uuid4().hex[:6]}")
    password = generate_sas_token(f"{hub.settings.hostname}/devices/{device_id}", key)
    assert _connect(hub, device_id, username=username, password=password) == NOT_AUTHORIZED, username


# ---- model id (Plug and Play) -------------------------------------------------------------
@pytest.mark.parametrize("encoded", [True, False], ids=["python-sdk-encoded", "node-sdk-raw"])
def test_announced_model_id_is_the_twins_model_id_and_queryable(hub, service, encoded):
    device_id, key = _new(service)
    assert _twin(service, device_id)["modelId"] == ""
    model = urllib.parse.quote(THERMOSTAT, safe="") if encoded else THERMOSTAT
    username = f"{hub.settings.hostname}/{device_id}/?api-version=2020-09-30&DeviceClientType=x&model-id={model}"
    etag = _twin(service, device_id)["etag"]
    password = generate_sas_token(f"{hub.settings.hostname}/devices/{device_id}", key)
    assert _connect(hub, device_id, username=username, password=password) == 0
    twin = _twin(service, device_id)
    assert twin["modelId"] == THERMOSTAT
    assert twin["etag"] == etag, "connecting must not change the twin etag"
    r = service.request("POST", "/devices/query",
                        json_body={"query": f"SELECT * FROM devices WHERE modelId = '{THERMOSTAT}' AND deviceId = '{device_id}'"})
    assert [t["deviceId"] for t in r.json()] == [device_id]
    # A later connection without model-id keeps it; an invalid one is ignored.
    plain = f"{hub.settings.hostname}/{device_id}/?api-version=2021-04-12&model-id=not-a-dtmi"
    assert _connect(hub, device_id, username=plain, password=password) == 0
    assert _twin(service, device_id)["modelId"] == THERMOSTAT


def test_model_id_survives_a_hub_restart(tmp_path):
    from iot_flows.hub import HubSettings
    from iot_flows.hub._embedded import EmbeddedHub
    from tests.support import Service

    settings = HubSettings(mqtt_port=0, http_port=0, db=str(tmp_path / "hub.db"))
    with EmbeddedHub(settings) as running:
        svc = Service(running.base_url, running.connection_string())
        device_id, key = _new(svc)
        h = running.hub.settings.hostname
        username = f"{h}/{device_id}/?api-version=2020-09-30&model-id={THERMOSTAT}"
        assert _connect(running.hub, device_id, username=username,
                        password=generate_sas_token(f"{h}/devices/{device_id}", key)) == 0
        cs = running.connection_string()
        svc.close()
    with EmbeddedHub(settings) as again:
        svc = Service(again.base_url, cs)
        assert _twin(svc, device_id)["modelId"] == THERMOSTAT
        svc.close()


# ---- SAS token forms on MQTT ----------------------------------------------------------------
def _policy_key(hub, policy):
    return hub.service_auth.policy_keys[policy]


@pytest.mark.parametrize("case,accepted", [
    ("device-key", True),
    ("device-key-lowercase-encoding", True),
    ("policy-device", True),            # az iot hub generate-sas-token --policy-name device --device-id X
    ("policy-iothubowner", True),
    ("policy-device-all-devices", True),  # sr={host}/devices covers every device
    ("policy-device-whole-hub", True),    # sr={host}: a per-segment prefix too
    ("policy-registryRead", False),
    ("policy-service", False),
    ("policy-registryReadWrite", False),
    ("policy-unknown", False),
    ("policy-device-wrong-key", False),
    ("policy-device-other-device", False),
    ("policy-device-id-prefix-not-segment", False),  # /devices/d1 must not cover /devices/d12
    ("policy-device-expired", False),
    ("device-key-with-skn", False),  # the device's key presented as a policy signature
])
def test_sas_token_forms_on_mqtt(hub, service, case, accepted):
    device_id, key = _new(service)
    host = hub.settings.hostname
    uri = f"{host}/devices/{device_id}"
    if case == "device-key":
        password = generate_sas_token(uri, key)
    elif case == "device-key-lowercase-encoding":
        se = int(time.time()) + 600
        lower = urllib.parse.quote(uri, safe="").replace("%2F", "%2f")  # D-SAS examples use %2f
        digest = hmac.new(base64.b64decode(key), f"{lower}\n{se}".encode(), hashlib.sha256).digest()
        sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
        password = f"SharedAccessSignature sr={lower}&sig={sig}&se={se}"
    elif case == "policy-device-all-devices":
        password = generate_sas_token(f"{host}/devices", _policy_key(hub, "device"), policy="device")
    elif case == "policy-device-whole-hub":
        password = generate_sas_token(host, _policy_key(hub, "device"), policy="device")
    elif case == "policy-device-wrong-key":
        password = generate_sas_token(uri, _policy_key(hub, "service"), policy="device")
    elif case == "policy-device-other-device":
        password = generate_sas_token(f"{host}/devices/someone-else", _policy_key(hub, "device"), policy="device")
    elif case == "policy-device-id-prefix-not-segment":
        longer_id = device_id + "2"
        service.create_device(longer_id)
        password = generate_sas_token(uri, _policy_key(hub, "device"), policy="device")
        device_id = longer_id
    elif case == "policy-device-expired":
        password = generate_sas_token(uri, _policy_key(hub, "device"), policy="device", expiry=int(time.time()) - 5)
    elif case == "policy-unknown":
        password = generate_sas_token(uri, _policy_key(hub, "device"), policy="nobody")
    elif case == "device-key-with-skn":
        password = generate_sas_token(uri, key, policy="device")
    else:
        policy = case.removeprefix("policy-")
        password = generate_sas_token(uri, _policy_key(hub, policy), policy=policy)
    username = f"{host}/{device_id}/?api-version=2021-04-12"
    assert _connect(hub, device_id, username=username, password=password) == (0 if accepted else NOT_AUTHORIZED)


def test_policy_token_device_gets_full_service(hub, service):
    """A device connected with a policy token works like any other: twin GET and reported PATCH."""
    device_id, _ = _new(service)
    host = hub.settings.hostname
    password = generate_sas_token(f"{host}/devices/{device_id}", _policy_key(hub, "device"), policy="device")
    dev = Device("127.0.0.1", hub.mqtt_port, host, device_id, None, password=password)
    try:
        assert dev.connect() == 0
        dev.subscribe_iothub()
        assert dev.patch_reported({"via": "policy"})[0] == 204
        assert _twin(service, device_id)["properties"]["reported"]["via"] == "policy"
    finally:
        dev.disconnect()


# ---- SAS token forms on REST ----------------------------------------------------------------
@pytest.mark.parametrize("case,status", [
    ("owner", 200),
    ("lowercase-encoded-host", 200),
    ("fields-reordered", 200),
    ("device-policy", 401),        # DeviceConnect grants nothing on the service API
    ("device-key-token", 401),     # a device's own token is not a service credential
    ("registryRead", 200),
])
def test_sas_token_forms_on_rest(hub, service, case, status):
    host = hub.settings.hostname
    device_id, key = _new(service)
    owner = _policy_key(hub, "iothubowner")
    if case == "owner":
        token = generate_sas_token(host, owner, policy="iothubowner")
    elif case == "lowercase-encoded-host":
        token = generate_sas_token(host.lower(), owner, policy="iothubowner")
    elif case == "fields-reordered":
        token = generate_sas_token(host, owner, policy="iothubowner")
        fields = token.removeprefix("SharedAccessSignature ").split("&")
        token = "SharedAccessSignature " + "&".join(reversed(fields))
    elif case == "device-policy":
        token = generate_sas_token(host, _policy_key(hub, "device"), policy="device")
    elif case == "device-key-token":
        token = generate_sas_token(f"{host}/devices/{device_id}", key)
    else:
        token = generate_sas_token(host, _policy_key(hub, "registryRead"), policy="registryRead")
    r = service.request("GET", f"/devices/{device_id}", token=token)
    assert r.status_code == status, r.text
