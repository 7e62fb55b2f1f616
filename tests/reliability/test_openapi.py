"""The service REST API's OpenAPI document: served, kept in the repo, and true of the hub.

``/openapi.json`` needs no authentication and no api-version (like ``/healthz``); it equals
``docs/openapi.json``. schemathesis generates requests from the document (valid ones and,
in negative mode, ones the document forbids) and sends them to a live hub with a valid SAS
``Authorization`` header: no response may be a 5xx, every response must match the document
(status code, content type, body schema), and every error must be in IoT Hub's error
format with its numeric code (docs/iothub-reference.md §3.8).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from iot_flows.hub.api._openapi import dumps, openapi_document

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
#: Examples per operation and generation mode: the whole schemathesis run stays well under 60 s.
MAX_EXAMPLES = 10
CASES: dict[str, dict[int, int]] = {}  # operation -> status -> responses (printed at the end)


def test_openapi_is_served_without_auth_and_equals_the_repository_copy(own_hub):
    r = httpx.get(f"{own_hub.base_url}/openapi.json")
    assert r.status_code == 200
    assert r.json() == json.loads(DOC.read_text())
    assert DOC.read_text() == dumps(), "docs/openapi.json is stale: python -m iot_flows.hub.api._openapi > docs/openapi.json"


def test_openapi_document_is_valid_and_lists_every_azure_route(own_hub):
    doc = openapi_document()
    schema = schemathesis.openapi.from_dict(doc)  # validates against the OpenAPI 3.0 meta-schema
    labels = {op.ok().label for op in schema.get_all_operations()}
    for label in ["GET /devices/{deviceId}", "PUT /devices/{deviceId}", "DELETE /devices/{deviceId}", "GET /devices",
                  "POST /devices", "GET /twins/{deviceId}", "PATCH /twins/{deviceId}", "PUT /twins/{deviceId}",
                  "POST /twins/{deviceId}/methods", "POST /devices/query", "GET /jobs/v2/query", "PUT /jobs/v2/{jobId}",
                  "GET /jobs/v2/{jobId}", "POST /jobs/v2/{jobId}/cancel"]:
        assert label in labels
        method, path = label.split(" ")
        params = doc["paths"][path][method.lower()]["parameters"]
        assert {"$ref": "#/components/parameters/ApiVersion"} in params


# Loaded from the document the hub serves (test above: served == repository copy == this).
schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES,
                                database="none")


@pytest.fixture(scope="module", autouse=True)
def _report_cases():
    yield
    total = sum(sum(by_status.values()) for by_status in CASES.values())
    print(f"\nschemathesis responses per operation and status: {CASES} (total {total})")


def assert_iot_hub_error(response, label: str) -> None:
    """A 4xx/5xx body is IoT Hub's error: {"Message": <JSON string with errorCode>, "ExceptionMessage": ...}."""
    body = response.json()
    if label == "POST /devices" and "isSuccessful" in body:  # bulk results are answered as-is (Azure does too)
        assert body["isSuccessful"] is False and body["errors"]
        return
    assert set(body) == {"Message", "ExceptionMessage"}, body
    assert response.headers.get("iothub-errorcode"), "missing iothub-errorcode header"
    message = body["Message"]
    if message.startswith("ErrorCode:DeviceNotFound;"):  # the legacy form the SDKs match on
        assert response.status_code == 404
        return
    inner = json.loads(message)
    assert isinstance(inner["errorCode"], int)
    assert inner["errorCode"] // 1000 == response.status_code, (inner, response.status_code)
    assert inner["trackingId"] and isinstance(inner["message"], str)


@schema.parametrize()
def test_hub_answers_every_request_the_schema_allows(case, own_hub, own_service):
    label = f"{case.method.upper()} {case.path}"
    response = case.call(base_url=own_hub.base_url, headers={"Authorization": own_service.cs.token()}, timeout=30)
    by_status = CASES.setdefault(label, {})
    by_status[response.status_code] = by_status.get(response.status_code, 0) + 1
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                             response_schema_conformance])
    if response.status_code >= 400:
        assert_iot_hub_error(response, label)


@pytest.mark.parametrize(("method", "path", "status", "code", "name"), [
    ("DELETE", "/healthz", 405, 405000, "GenericMethodNotAllowed"),  # found by schemathesis: was 500001
    ("PATCH", "/devices?api-version=2021-04-12", 405, 405000, "GenericMethodNotAllowed"),
    ("GET", "/devices/x?api-version=2021-04-12", 404, None, "DeviceNotFound"),
])
def test_generic_http_errors_carry_iot_hub_codes_of_their_status(own_hub, own_service, method, path, status, code, name):
    r = httpx.request(method, f"{own_hub.base_url}{path}", headers={"Authorization": own_service.cs.token()})
    assert r.status_code == status
    assert r.headers["iothub-errorcode"] == name
    assert_iot_hub_error(r, f"{method} {path}")
    if code is not None:
        assert json.loads(r.json()["Message"])["errorCode"] == code
