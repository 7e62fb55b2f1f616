"""Registry REST API and service authentication (SAS policies, permissions, expiry)."""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from iot_flows._sas import ConnectionString, generate_sas_token
from tests.support import Service, error_code


def _id() -> str:
    return f"reg-{uuid.uuid4().hex[:10]}"


def test_create_generates_keys_and_defaults(service):
    device_id = _id()
    r = service.request("PUT", f"/devices/{device_id}", json_body={"deviceId": device_id, "unknownField": 1})
    assert r.status_code == 200
    body = r.json()
    keys = body["authentication"]["symmetricKey"]
    assert len(base64.b64decode(keys["primaryKey"])) >= 16 and keys["primaryKey"] != keys["secondaryKey"]
    assert body["status"] == "enabled" and body["connectionState"] == "Disconnected"
    assert body["etag"]


def test_empty_keys_are_generated_and_given_keys_are_kept(service):
    device_id = _id()
    r = service.request("PUT", f"/devices/{device_id}", json_body={
        "deviceId": device_id, "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}})
    assert r.json()["authentication"]["symmetricKey"]["primaryKey"]
    key = base64.b64encode(b"k" * 16).decode()
    other = _id()
    r = service.request("PUT", f"/devices/{other}", json_body={
        "authentication": {"symmetricKey": {"primaryKey": key, "secondaryKey": key}}})
    assert r.json()["authentication"]["symmetricKey"]["primaryKey"] == key
    short = base64.b64encode(b"short").decode()
    r = service.request("PUT", f"/devices/{_id()}", json_body={"authentication": {"symmetricKey": {"primaryKey": short}}})
    assert r.status_code == 400


def test_duplicate_create_is_409001_and_if_match_updates(service):
    device = service.create_device()
    device_id = device["deviceId"]
    dup = service.request("PUT", f"/devices/{device_id}", json_body={"deviceId": device_id})
    assert dup.status_code == 409 and error_code(dup) == 409001
    assert dup.headers["iothub-errorcode"] == "DeviceAlreadyExists"
    upd = service.request("PUT", f"/devices/{device_id}", json_body={**device, "status": "disabled"},
                          headers={"If-Match": f'"{device["etag"]}"'})
    assert upd.status_code == 200 and upd.json()["status"] == "disabled"
    assert upd.json()["authentication"]["symmetricKey"] == device["authentication"]["symmetricKey"]
    stale = service.request("PUT", f"/devices/{device_id}", json_body={**device, "status": "enabled"},
                            headers={"If-Match": f'"{device["etag"]}"'})
    assert stale.status_code == 412 and error_code(stale) == 412001


def test_invalid_ids_are_rejected_and_not_created(service):
    for bad in ["has+plus", "x" * 129]:
        r = service.request("PUT", f"/devices/{bad}", json_body={})
        assert r.status_code == 400, bad
        assert service.request("GET", f"/devices/{bad}").status_code == 404


def test_delete_then_recreate_gives_a_fresh_twin(service):
    device_id = service.create_device()["deviceId"]
    service.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"old": 1}})
    r = service.request("DELETE", f"/devices/{device_id}", headers={"If-Match": '"*"'})
    assert r.status_code == 204
    gone = service.request("GET", f"/devices/{device_id}")
    assert gone.status_code == 404 and gone.json()["Message"].startswith("ErrorCode:DeviceNotFound;")
    assert service.request("DELETE", f"/devices/{device_id}").status_code == 404
    service.create_device(device_id)
    assert service.request("GET", f"/twins/{device_id}").json()["tags"] == {}


def test_bulk_create_up_to_100_and_errors_per_device(service):
    prefix = _id()
    items = [{"id": f"{prefix}-{i}", "importMode": "create", "status": "enabled"} for i in range(100)]
    r = service.request("POST", "/devices", json_body=items)
    assert r.status_code == 200 and r.json() == {"isSuccessful": True, "errors": [], "warnings": []}
    assert service.request("GET", f"/devices/{prefix}-99").status_code == 200
    again = service.request("POST", "/devices", json_body=items[:2] + [{"id": f"{prefix}-new", "importMode": "Create"}])
    body = again.json()
    assert again.status_code == 400 and body["isSuccessful"] is False
    assert {e["deviceId"] for e in body["errors"]} == {f"{prefix}-0", f"{prefix}-1"}
    assert all(e["errorCode"] == "DeviceAlreadyExists" for e in body["errors"])
    assert service.request("GET", f"/devices/{prefix}-new").status_code == 200  # others still applied
    too_many = service.request("POST", "/devices", json_body=[{"id": f"{prefix}-x{i}"} for i in range(101)])
    assert too_many.status_code == 400
    delete = service.request("POST", "/devices", json_body=[{"id": f"{prefix}-new", "importMode": "delete"}])
    assert delete.status_code == 200
    assert service.request("GET", f"/devices/{prefix}-new").status_code == 404


@pytest.mark.parametrize("field", [
    {"statusReason": ["x"]},
    {"authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": [1]}}},
    {"authentication": {"type": "selfSigned", "x509Thumbprint": {"secondaryThumbprint": {"a": 1}}}},
])
def test_identity_text_fields_of_the_wrong_type_are_400_and_store_nothing(service, field):
    # Found by schemathesis: a list in statusReason/thumbprints reached SQLite (500).
    device_id = _id()
    r = service.request("PUT", f"/devices/{device_id}", json_body={"deviceId": device_id, **field})
    assert r.status_code == 400 and "must be a string or null" in r.json()["Message"], r.text
    assert service.request("GET", f"/devices/{device_id}").status_code == 404
    bulk = service.request("POST", "/devices", json_body=[{"id": device_id, "importMode": "create", **field}])
    assert bulk.status_code == 400 and bulk.json()["errors"][0]["deviceId"] == device_id, bulk.text
    assert service.request("GET", f"/devices/{device_id}").status_code == 404


def test_list_devices_pages_with_continuation(service):
    for _ in range(3):
        service.create_device()
    r = service.request("GET", "/devices?top=2")
    assert r.status_code == 200 and len(r.json()) == 2
    token = r.headers["x-ms-continuation"]
    nxt = service.request("GET", "/devices?top=2", headers={"x-ms-continuation": token})
    assert nxt.json()[0]["deviceId"] > r.json()[-1]["deviceId"]


# ---- auth -------------------------------------------------------------------------------
def _hub_key(embedded_hub, policy):
    return embedded_hub.hub.service_auth.policy_keys[policy]


@pytest.mark.parametrize("case", ["missing", "garbage", "bad_signature", "expired", "wrong_hub", "unknown_policy"])
def test_bad_service_tokens_get_401(embedded_hub, service, case):
    host = embedded_hub.hub.settings.hostname
    key = _hub_key(embedded_hub, "iothubowner")
    token = {
        "missing": "",
        "garbage": "Bearer nonsense",
        "bad_signature": generate_sas_token(host, base64.b64encode(b"x" * 32).decode(), policy="iothubowner"),
        "expired": generate_sas_token(host, key, policy="iothubowner", expiry=int(time.time()) - 5),
        "wrong_hub": generate_sas_token("other.azure-devices.net", key, policy="iothubowner"),
        "unknown_policy": generate_sas_token(host, key, policy="nobody"),
    }[case]
    r = service.request("GET", "/devices?top=1", token=token)
    assert r.status_code == 401
    assert r.headers["iothub-errorcode"].startswith("IotHubUnauthorized")


def test_policy_permissions(embedded_hub, service):
    device = service.create_device()
    device_id = device["deviceId"]

    def as_policy(policy: str) -> Service:
        cs = str(ConnectionString(host_name=embedded_hub.hub.settings.hostname, shared_access_key_name=policy,
                                  shared_access_key=_hub_key(embedded_hub, policy)))
        return Service(embedded_hub.base_url, cs)

    reader, rw, svc, dev = as_policy("registryRead"), as_policy("registryReadWrite"), as_policy("service"), as_policy("device")
    try:
        assert reader.request("GET", f"/devices/{device_id}").status_code == 200
        assert reader.request("PUT", f"/devices/{_id()}", json_body={}).status_code == 401
        assert rw.request("PUT", f"/devices/{_id()}", json_body={}).status_code == 200
        assert svc.request("GET", f"/devices/{device_id}").status_code == 401
        assert svc.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"a": 1}}).status_code == 200
        assert rw.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"a": 1}}).status_code == 401
        assert dev.request("GET", f"/twins/{device_id}").status_code == 401
        assert svc.request("POST", f"/twins/{device_id}/methods", json_body={"methodName": "x"}).status_code == 404
    finally:
        for s in (reader, rw, svc, dev):
            s.close()


def test_python_sdk_style_signature_with_unencoded_slash(embedded_hub, service):
    """The Python service SDK leaves '/' in the signature un-encoded; accept it."""
    host = embedded_hub.hub.settings.hostname
    key = _hub_key(embedded_hub, "iothubowner")
    for _ in range(40):  # find a token whose signature contains '/'
        token = generate_sas_token(host, key, policy="iothubowner", expiry=int(time.time()) + 3600 + _)
        if "%2F" in token.split("sig=")[1].split("&")[0]:
            break
    else:
        pytest.skip("no signature with '/' found")
    token = token.replace("%2F", "/")
    assert service.request("GET", "/devices?top=1", token=token).status_code == 200


def test_unknown_route_uses_iothub_error_format(service):
    r = service.request("GET", "/no/such/route")
    assert r.status_code == 404 and "Message" in r.json()


def test_a_verified_service_token_is_reused_only_while_its_key_and_expiry_stand() -> None:
    from iot_flows._exceptions import UnauthorizedError
    from iot_flows._sas import generate_key
    from iot_flows.hub._auth import Permission, ServiceAuthenticator

    host = "cache.azure-devices.net"
    old_key = generate_key()
    auth = ServiceAuthenticator(host, {"iothubowner": old_key, "registryRead": generate_key()})
    token = generate_sas_token(host, old_key, policy="iothubowner", expiry=int(time.time()) + 2)
    assert auth.authorize(token, Permission.SERVICE_CONNECT) == "iothubowner"
    assert auth.authorize(token, Permission.REGISTRY_WRITE) == "iothubowner"  # from the cache
    reader = generate_sas_token(host, auth.policy_keys["registryRead"], policy="registryRead")
    assert auth.authorize(reader, Permission.REGISTRY_READ) == "registryRead"
    with pytest.raises(UnauthorizedError):  # permissions are checked on every call, cached or not
        auth.authorize(reader, Permission.REGISTRY_WRITE)
    auth.policy_keys["iothubowner"] = generate_key()  # key regenerated: the old token is refused at once
    with pytest.raises(UnauthorizedError):
        auth.authorize(token, Permission.SERVICE_CONNECT)
    auth.policy_keys["iothubowner"] = old_key
    assert auth.authorize(token, Permission.SERVICE_CONNECT) == "iothubowner"
    time.sleep(3.1)
    with pytest.raises(UnauthorizedError) as expired:  # the cached entry ends with the token
        auth.authorize(token, Permission.SERVICE_CONNECT)
    assert expired.value.error_code == 401003
