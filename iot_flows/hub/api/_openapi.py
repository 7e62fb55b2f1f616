"""The service REST API as an OpenAPI 3.0 document, served at ``/openapi.json``.

The document describes what the hub really accepts (docs/iothub-reference.md §3): Azure IoT Hub's paths,
the required ``api-version`` query parameter (400001 InvalidProtocolVersion otherwise), the
SAS ``Authorization`` header, request bodies, status codes, and IoT Hub's error body
(docs/iothub-reference.md §3.8: ``{"Message": "<JSON string>", "ExceptionMessage": "..."}`` with the
symbolic code in the ``iothub-errorcode`` header). The repository keeps a copy in
``docs/openapi.json`` (regenerate with ``python -m iot_flows.hub.api._openapi``); a test
checks that the served document equals it, and schemathesis checks the hub against it.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iot_flows.hub.api._request_rules import SUPPORTED_API_VERSIONS

__all__ = ["openapi_document", "openapi_routes"]

_REF = "#/components"
_OBJ: dict[str, Any] = {"type": "object"}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"{_REF}/{kind}/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ref("responses", "Error") for code in codes}


def _op(op_id: str, summary: str, ok: dict[str, Any], *errors: int, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, ok_status: str = "200") -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "parameters": [_ref("parameters", "ApiVersion"), *(params or [])],
        "responses": {ok_status: ok, **_errors(400, 401, *errors)},
    }
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


def _ok(schema: dict[str, Any], description: str = "Success.") -> dict[str, Any]:
    return {"description": description, **_json(schema)}


_DEVICE_ID = {"name": "deviceId", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": r"^[A-Za-z0-9\-:.%_*?!(),=@;$']{1,128}$"}}
_JOB_ID = {"name": "jobId", "in": "path", "required": True, "schema": {"type": "string", "pattern": r"^[A-Za-z0-9-]{1,64}$"}}
#: A base64 key of at least 16 bytes (what the registry accepts); empty or null: the hub generates one.
_KEY = {"type": "string", "nullable": True,
        "pattern": r"^$|^(?:[A-Za-z0-9+/]{4}){5,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}
_CONTINUATION = {"name": "x-ms-continuation", "in": "header", "required": False, "schema": {"type": "string"}}
_MAX_ITEMS = {"name": "x-ms-max-item-count", "in": "header", "required": False,
              "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}


def _schemas() -> dict[str, Any]:
    twin_props = {"type": "object", "additionalProperties": True}
    return {
        "Error": {
            "type": "object",
            "description": "IoT Hub's error body: Message holds a JSON string with errorCode, trackingId, message, "
                           "info and timestampUtc (or the legacy 'ErrorCode:DeviceNotFound;...' text).",
            "required": ["Message", "ExceptionMessage"],
            "properties": {"Message": {"type": "string"}, "ExceptionMessage": {"type": "string"}},
        },
        "SymmetricKey": {"type": "object", "properties": {"primaryKey": _KEY, "secondaryKey": _KEY}},
        "Authentication": {"type": "object", "properties": {
            "type": {"type": "string", "enum": ["sas", "selfSigned", "certificateAuthority", "none"]},
            "symmetricKey": _ref("schemas", "SymmetricKey"),
            "x509Thumbprint": {"type": "object", "properties": {
                "primaryThumbprint": {"type": "string", "nullable": True},
                "secondaryThumbprint": {"type": "string", "nullable": True}}}}},
        "Device": {"type": "object", "required": ["deviceId"], "properties": {
            "deviceId": {"type": "string"}, "generationId": {"type": "string"}, "etag": {"type": "string"},
            "status": {"type": "string", "enum": ["enabled", "disabled"]},
            "statusReason": {"type": "string", "nullable": True},
            "connectionState": {"type": "string", "enum": ["Connected", "Disconnected"]},
            "authentication": _ref("schemas", "Authentication"),
            "capabilities": {"type": "object", "properties": {"iotEdge": {"type": "boolean"}}}}},
        "DeviceRequest": {"type": "object", "description": "A device identity to create or update; a deviceId "
                          "property, when given, must equal the one in the path.", "properties": {
            "etag": {"type": "string"},
            "status": {"type": "string", "enum": ["enabled", "disabled"]},
            "statusReason": {"type": "string", "nullable": True},
            "authentication": _ref("schemas", "Authentication"),
            "capabilities": {"type": "object", "properties": {"iotEdge": {"type": "boolean"}}}}},
        "ExportImportDevice": {"type": "object", "required": ["id"], "properties": {
            "id": _DEVICE_ID["schema"], "eTag": {"type": "string"},
            "importMode": {"type": "string", "enum": ["create", "update", "updateIfMatchETag", "createOrUpdate",
                                                       "createOrUpdateIfMatchETag", "delete", "deleteIfMatchETag"]},
            "status": {"type": "string", "enum": ["enabled", "disabled"]},
            "authentication": _ref("schemas", "Authentication")}},
        "BulkRegistryOperationResult": {"type": "object", "required": ["isSuccessful", "errors", "warnings"],
                                        "properties": {"isSuccessful": {"type": "boolean"},
                                                       "errors": {"type": "array", "items": _OBJ},
                                                       "warnings": {"type": "array", "items": _OBJ}}},
        "Twin": {"type": "object", "required": ["deviceId", "properties"], "properties": {
            "deviceId": {"type": "string"}, "etag": {"type": "string"}, "version": {"type": "integer"},
            "tags": twin_props, "status": {"type": "string"},
            "connectionState": {"type": "string"},
            "properties": {"type": "object", "properties": {"desired": twin_props, "reported": twin_props}}}},
        "TwinPatch": {"type": "object", "description": "A twin (or its tags/desired properties) to merge or replace.",
                      "properties": {"tags": twin_props, "etag": {"type": "string"},
                                     "properties": {"type": "object", "properties": {"desired": twin_props}}}},
        "CloudToDeviceMethod": {"type": "object", "required": ["methodName"], "properties": {
            "methodName": {"type": "string", "minLength": 1, "pattern": r"^[!#%&'*+\-.0-9A-Z^_`a-z|~]+$"},
            "payload": {},
            "responseTimeoutInSeconds": {"type": "integer", "minimum": 5, "maximum": 300, "default": 30},
            "connectTimeoutInSeconds": {"type": "integer", "minimum": 0, "maximum": 300, "default": 0}}},
        "CloudToDeviceMethodResult": {"type": "object", "required": ["status"], "properties": {
            "status": {"type": "integer"}, "payload": {}}},
        "QuerySpecification": {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}},
        "JobRequest": {"type": "object", "required": ["type", "queryCondition"], "properties": {
            "jobId": {"type": "string"},
            "type": {"type": "string", "enum": ["scheduleDeviceMethod", "scheduleUpdateTwin"]},
            "queryCondition": {"type": "string"}, "startTime": {"type": "string", "format": "date-time"},
            "maxExecutionTimeInSeconds": {"type": "integer", "minimum": 1},
            "cloudToDeviceMethod": _ref("schemas", "CloudToDeviceMethod"),
            "updateTwin": _ref("schemas", "TwinPatch")}},
        "JobResponse": {"type": "object", "required": ["jobId", "status"], "properties": {
            "jobId": {"type": "string"}, "type": {"type": "string"}, "status": {"type": "string"},
            "queryCondition": {"type": "string"}, "createdTime": {"type": "string"},
            "deviceJobStatistics": _OBJ}},
    }


def _bulk_op() -> dict[str, Any]:
    op = _op("bulkDevices", "Create, update or delete up to 100 device identities; 400 with the result "
             "(isSuccessful false) when an item failed.", _ok(_ref("schemas", "BulkRegistryOperationResult")), 413,
             body={"type": "array", "maxItems": 100, "items": _ref("schemas", "ExportImportDevice")})
    op["responses"]["400"] = {"description": "Bad request, or some items failed.", **_json(
        {"oneOf": [_ref("schemas", "Error"), _ref("schemas", "BulkRegistryOperationResult")]})}
    return op


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0.3 document (a JSON-ready dict) for the hub's service REST API."""
    versions = sorted(SUPPORTED_API_VERSIONS, reverse=True)
    device_params = [_DEVICE_ID]
    paths: dict[str, Any] = {
        "/devices": {
            "get": _op("listDevices", "List device identities (a page of `top`).", _ok({"type": "array", "items": _ref("schemas", "Device")}),
                       params=[{"name": "top", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}, _CONTINUATION]),
            "post": _bulk_op(),
        },
        "/devices/{deviceId}": {
            "get": _op("getDevice", "Get a device identity.", _ok(_ref("schemas", "Device")), 404, params=device_params),
            "put": _op("putDevice", "Create or update a device identity.", _ok(_ref("schemas", "Device")), 404, 409, 412,
                       params=[*device_params, _IF_MATCH], body=_ref("schemas", "DeviceRequest")),
            "delete": _op("deleteDevice", "Delete a device identity.", {"description": "Deleted."}, 404, 412,
                          params=[*device_params, _IF_MATCH], ok_status="204"),
        },
        "/twins/{deviceId}": {
            "get": _op("getTwin", "Get a device twin.", _ok(_ref("schemas", "Twin")), 404, params=device_params),
            "patch": _op("updateTwin", "Merge tags and desired properties into a twin.", _ok(_ref("schemas", "Twin")),
                         404, 412, 413, params=[*device_params, _IF_MATCH], body=_ref("schemas", "TwinPatch")),
            "put": _op("replaceTwin", "Replace a twin's tags and desired properties.", _ok(_ref("schemas", "Twin")),
                       404, 412, 413, params=[*device_params, _IF_MATCH], body=_ref("schemas", "TwinPatch")),
        },
        "/twins/{deviceId}/methods": {
            "post": _op("invokeDeviceMethod", "Invoke a direct method; 404103 when the device is not online, "
                        "504101 when it does not answer in time.", _ok(_ref("schemas", "CloudToDeviceMethodResult")),
                        404, 413, 504, params=device_params, body=_ref("schemas", "CloudToDeviceMethod")),
        },
        "/devices/query": {
            "post": _op("queryDevices", "Run an IoT Hub query (paged with x-ms-continuation).",
                        _ok({"type": "array", "items": {}}), params=[_CONTINUATION, _MAX_ITEMS],
                        body=_ref("schemas", "QuerySpecification")),
        },
        "/jobs/v2/query": {
            "get": _op("queryJobs", "List jobs, optionally by type and status.",
                       _ok({"type": "array", "items": _ref("schemas", "JobResponse")}),
                       params=[{"name": "jobType", "in": "query", "required": False, "schema": {"type": "string"}},
                               {"name": "jobStatus", "in": "query", "required": False, "schema": {"type": "string"}},
                               _CONTINUATION, _MAX_ITEMS]),
        },
        "/jobs/v2/{jobId}": {
            "put": _op("createJob", "Schedule a method or twin-update job.", _ok(_ref("schemas", "JobResponse")), 409,
                       params=[_JOB_ID], body=_ref("schemas", "JobRequest")),
            "get": _op("getJob", "Get a job.", _ok(_ref("schemas", "JobResponse")), 404, params=[_JOB_ID]),
        },
        "/jobs/v2/{jobId}/cancel": {
            "post": _op("cancelJob", "Cancel a job.", _ok(_ref("schemas", "JobResponse")), 404, 409, params=[_JOB_ID]),
        },
        "/healthz": {"get": {"operationId": "health", "summary": "Liveness (no authentication, no api-version).",
                             "security": [], "responses": {"200": _ok(_OBJ), "503": _ok(_OBJ, "Starting.")}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document (no authentication).",
                                  "security": [], "responses": {"200": _ok(_OBJ)}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "iot-flows hub: IoT Hub service REST API", "version": versions[0],
                 "description": "The Azure IoT Hub service REST API subset the hub serves. Every Azure path needs "
                                "?api-version= and a SAS token (SharedAccessSignature sr=...&sig=...&se=...&skn=...) "
                                "in the Authorization header."},
        "security": [{"sas": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"sas": {"type": "apiKey", "in": "header", "name": "Authorization"}},
            "parameters": {"ApiVersion": {"name": "api-version", "in": "query", "required": True,
                                          "schema": {"type": "string", "enum": versions}}},
            "responses": {"Error": {
                "description": "IoT Hub error; the iothub-errorcode header names the error.",
                "headers": {"iothub-errorcode": {"schema": {"type": "string"}}},
                **_json(_ref("schemas", "Error"))}},
            "schemas": _schemas(),
        },
    }


async def serve_openapi(request: Request) -> Response:
    """``GET /openapi.json``: the REST API as OpenAPI 3."""
    return JSONResponse(openapi_document())


def openapi_routes() -> list[Route]:
    """The route serving ``/openapi.json``."""
    return [Route("/openapi.json", serve_openapi, methods=["GET"])]


def dumps() -> str:
    """The document as the repository keeps it (``docs/openapi.json``)."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(dumps(), end="")
