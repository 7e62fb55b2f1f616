"""Rules every REST request meets (docs/azure-contract.md "Path forms" and "api-version").

Every route answers with and without a trailing '/' and never redirects (the Node service
SDK lists devices with ``GET /devices/?api-version=...`` and treats a 307 as an error);
a missing or unknown ``api-version`` is 400 / 400001 InvalidProtocolVersion, as in Azure.
"""

from __future__ import annotations

import json
import uuid

import pytest

from iot_flows.hub.api._request_rules import SUPPORTED_API_VERSIONS
from tests.support import error_code


def _ids(service):
    device_id = service.create_device()["deviceId"]
    return device_id, f"job-{uuid.uuid4().hex[:12]}"


def _calls(device_id: str, job_id: str):
    """(method, path, body, headers, expected status) for every REST route."""
    new_id = f"new-{uuid.uuid4().hex[:10]}"
    return [
        ("GET", "/devices", None, {}, 200),
        ("POST", "/devices", [{"id": f"bulk-{uuid.uuid4().hex[:8]}", "importMode": "create"}], {}, 200),
        ("GET", f"/devices/{device_id}", None, {}, 200),
        ("PUT", f"/devices/{new_id}", {"deviceId": new_id}, {}, 200),
        ("GET", f"/twins/{device_id}", None, {}, 200),
        ("PATCH", f"/twins/{device_id}", {"tags": {"t": 1}}, {"If-Match": '"*"'}, 200),
        ("PUT", f"/twins/{device_id}", {"tags": {"t": 2}}, {"If-Match": '"*"'}, 200),
        ("POST", f"/twins/{device_id}/methods", {"methodName": "m"}, {}, 404),  # offline: 404103, no redirect
        ("POST", "/devices/query", {"query": "SELECT * FROM devices"}, {}, 200),
        ("PUT", f"/jobs/v2/{job_id}", {"type": "scheduleUpdateTwin", "queryCondition": f"deviceId = '{device_id}'",
                                       "updateTwin": {"etag": "*", "tags": {"j": 1}}}, {}, 200),
        ("GET", f"/jobs/v2/{job_id}", None, {}, 200),
        ("GET", "/jobs/v2/query", None, {}, 200),
        ("POST", f"/jobs/v2/{job_id}/cancel", None, {}, None),  # 200 or 409 once the job ended
        ("DELETE", f"/devices/{new_id}", None, {"If-Match": '"*"'}, 204),
    ]


@pytest.mark.parametrize("slash", ["", "/"], ids=["bare", "trailing-slash"])
def test_every_route_answers_both_path_forms_without_redirect(service, slash):
    device_id, job_id = _ids(service)
    for method, path, body, headers, expected in _calls(device_id, job_id):
        r = service.request(method, path + slash, json_body=body, headers=headers, follow_redirects=False)
        assert not r.is_redirect, f"{method} {path}{slash} redirected: {r.status_code} {r.headers.get('location')}"
        if expected is None:
            assert r.status_code in (200, 409), (method, path + slash, r.status_code, r.text)
        else:
            assert r.status_code == expected, (method, path + slash, r.status_code, r.text)
        if r.status_code >= 400:
            assert "Message" in r.json(), r.text  # IoT Hub's error format, not Starlette's


def test_node_sdk_list_devices_form(service):
    """The exact request from the issue: ``GET /devices/?api-version=2021-04-12``."""
    r = service.http.get("/devices/?api-version=2021-04-12", headers={"Authorization": service.cs.token()},
                         follow_redirects=False)
    assert r.status_code == 200 and isinstance(r.json(), list)


@pytest.mark.parametrize("query", ["", "?api-version=not-a-version", "?api-version=", "?api-version=2099-01-01",
                                   "?API-VERSION=2021-04-12"],
                         ids=["missing", "garbage", "empty", "unknown-date", "wrong-case-name"])
@pytest.mark.parametrize("path", ["/devices", "/devices/x", "/twins/x", "/jobs/v2/query"])
def test_missing_or_invalid_api_version_is_400001(service, query, path):
    r = service.http.get(f"{path}{query}", headers={"Authorization": service.cs.token()})
    assert r.status_code == 400, r.text
    assert error_code(r) == 400001
    assert r.headers["iothub-errorcode"] == "InvalidProtocolVersion"
    assert json.loads(r.json()["Message"])["message"]


def test_invalid_api_version_stores_nothing(service):
    device_id = f"nover-{uuid.uuid4().hex[:8]}"
    r = service.http.put(f"/devices/{device_id}", json={"deviceId": device_id},
                         headers={"Authorization": service.cs.token()})
    assert r.status_code == 400 and error_code(r) == 400001
    assert service.request("GET", f"/devices/{device_id}").status_code == 404


@pytest.mark.parametrize("version", sorted(SUPPORTED_API_VERSIONS))
def test_versions_the_sdks_send_are_accepted(service, version):
    r = service.http.get(f"/devices?top=1&api-version={version}", headers={"Authorization": service.cs.token()})
    assert r.status_code == 200, r.text


def test_hub_own_endpoints_need_no_api_version(service):
    assert service.http.get("/healthz").status_code == 200
    r = service.http.get("/iot-flows/changes?since=-1", headers={"Authorization": service.cs.token()})
    assert r.status_code == 200


@pytest.mark.parametrize("raw", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",  # a header line without ':'
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nIf-Match: \x11\r\n\r\n",  # a control character (httptools refuses it)
])  # fmt: skip
def test_a_request_the_http_parser_refuses_gets_iot_hubs_error_format(embedded_hub, raw):
    """Parser-level refusals never reach the app; they are still IoT Hub's JSON error, not text/plain."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(embedded_hub.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 200"):  # h11 accepts a control character in a value: nothing to refuse
        assert b"\x11" in raw
        return
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"content-type: application/json" in head.lower() and b"iothub-errorcode: ArgumentInvalid" in head
    assert json.loads(json.loads(body)["Message"])["errorCode"] == 400004
