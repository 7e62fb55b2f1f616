"""``NaN`` / ``Infinity`` are not JSON (RFC 8259 §6) though Python's parser takes them: at every
place the hub parses what a device or a service sent, they are refused (400) or, for a
direct-method reply, relayed as text; nothing stored makes a later read invalid JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import Service, error_code

CONSTANTS = ["NaN", "Infinity", "-Infinity"]


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a hub answer: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("constant", CONSTANTS)
def test_a_reported_patch_with_a_non_json_number_is_400_and_stores_nothing(service: Service, devices: Any,
                                                                          constant: str) -> None:  # fmt: skip
    dev = devices()
    assert dev.patch_reported({"ok": 1})[0] == 204
    status, _ = dev.patch_reported(None, raw=f'{{"bad": {constant}, "ok": 2}}'.encode())
    assert status == 400
    twin = _strict_json(service.request("GET", f"/twins/{dev.device_id}").text)
    assert twin["properties"]["reported"]["ok"] == 1 and "bad" not in twin["properties"]["reported"]
    page = service.request("POST", "/devices/query", json_body={"query": "SELECT * FROM devices"})
    assert page.status_code == 200 and _strict_json(page.text)


@pytest.mark.parametrize("constant", CONSTANTS)
def test_a_service_body_with_a_non_json_number_is_400_iothubformaterror_and_stores_nothing(
    service: Service, constant: str
) -> None:
    device_id = service.create_device()["deviceId"]
    before = service.request("GET", f"/twins/{device_id}").json()
    r = service.request("PATCH", f"/twins/{device_id}", content=f'{{"tags": {{"bad": {constant}}}}}'.encode(),
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and error_code(r) == 400006, r.text
    assert service.request("GET", f"/twins/{device_id}").json()["etag"] == before["etag"]
