"""``POST /devices/query``: item types, paging with x-ms-continuation, TOP, errors, read-your-writes."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support import error_code


def _query(service, text, **headers):
    return service.request("POST", "/devices/query", json_body={"query": text}, headers=headers)


@pytest.fixture(scope="module")
def seeded(service):
    tag = uuid.uuid4().hex[:8]
    ids = []
    for i in range(7):
        device_id = service.create_device()["deviceId"]
        ids.append(device_id)
        service.request("PATCH", f"/twins/{device_id}", json_body={
            "tags": {"run": tag, "location": {"region": "US" if i < 4 else "EU"}, "group": {"name": f"g{i % 2}"}},
            "properties": {"desired": {"fw": "1.0" if i < 5 else "2.0", "n": i}}})
    return tag, sorted(ids)


def test_select_star_pages_with_continuation(service, seeded):
    tag, ids = seeded
    seen, token, pages = [], None, 0
    while True:
        headers = {"x-ms-max-item-count": "3"}
        if token:
            headers["x-ms-continuation"] = token
        r = _query(service, f"SELECT * FROM devices WHERE tags.run = '{tag}'", **headers)
        assert r.status_code == 200 and r.headers["x-ms-item-type"] == "twin"
        seen.extend(t["deviceId"] for t in r.json())
        pages += 1
        token = r.headers.get("x-ms-continuation")
        if not token:
            break
    assert seen == ids and pages == 3
    assert "properties" in r.json()[0] and "tags" in r.json()[0]


def test_filters_groups_and_aggregates(service, seeded):
    tag, ids = seeded
    r = _query(service, f"SELECT * FROM devices WHERE tags.run = '{tag}' AND tags.location.region = 'US' AND properties.desired.n >= 2")
    assert len(r.json()) == 2
    r = _query(service, f"SELECT properties.desired.fw AS fw, COUNT() AS n FROM devices WHERE tags.run = '{tag}' GROUP BY properties.desired.fw")
    assert r.headers["x-ms-item-type"] == "raw"
    assert sorted(r.json(), key=lambda x: x["fw"]) == [{"fw": "1.0", "n": 5}, {"fw": "2.0", "n": 2}]
    r = _query(service, f"SELECT COUNT() AS total FROM devices WHERE tags.run = '{tag}' AND tags.[[group]].name = 'g1'")
    assert r.json() == [{"total": 3}]
    r = _query(service, f"SELECT deviceId FROM devices WHERE tags.run = '{tag}' AND is_defined(properties.desired.fw) AND properties.desired.fw IN ['2.0']")
    expected = {d for d in ids if service.request("GET", f"/twins/{d}").json()["properties"]["desired"]["fw"] == "2.0"}
    assert r.headers["x-ms-item-type"] == "raw" and {x["deviceId"] for x in r.json()} == expected and len(expected) == 2


def test_top_limits_across_pages(service, seeded):
    tag, _ = seeded
    r = _query(service, f"SELECT TOP 4 * FROM devices WHERE tags.run = '{tag}'", **{"x-ms-max-item-count": "3"})
    assert len(r.json()) == 3 and r.headers.get("x-ms-continuation")
    r2 = _query(service, f"SELECT TOP 4 * FROM devices WHERE tags.run = '{tag}'",
                **{"x-ms-max-item-count": "3", "x-ms-continuation": r.headers["x-ms-continuation"]})
    assert len(r2.json()) == 1 and "x-ms-continuation" not in r2.headers


def test_read_your_writes(service, seeded):
    tag, ids = seeded
    service.request("PATCH", f"/twins/{ids[0]}", json_body={"tags": {"fresh": tag}})
    r = _query(service, f"SELECT * FROM devices WHERE tags.fresh = '{tag}'")
    assert [t["deviceId"] for t in r.json()] == [ids[0]]


@pytest.mark.parametrize("text", ["SELECT * FROM", "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'a')",
                                  "SELECT * FROM devices ORDER BY deviceId", "SELECT * FROM devices WHERE x = " + "1" * 8200,
                                  "SELECT COUNT() FROM devices.jobs"])
def test_bad_queries_are_400_with_position(service, text):
    r = _query(service, text)
    assert r.status_code == 400 and error_code(r) == 400004
    message = json.loads(r.json()["Message"])["message"]
    assert any(word in message for word in ("line", "column", "position", "8192")), message


def test_missing_query_body_and_bad_token(service):
    r = service.request("POST", "/devices/query", json_body={"nope": 1})
    assert r.status_code == 400
    r = _query(service, "SELECT * FROM devices", **{"x-ms-continuation": "not-a-token!"})
    assert r.status_code == 400


def test_change_stream_from_now_and_long_poll(service, seeded):
    _, ids = seeded
    now = service.request("GET", "/iot-flows/changes?since=-1").json()
    assert now["changes"] == [] and now["next"] >= 1
    service.request("PATCH", f"/twins/{ids[0]}", json_body={"properties": {"desired": {"probe": 1}}})
    after = service.request("GET", f"/iot-flows/changes?since={now['next']}&wait=5").json()
    kinds = [(c["kind"], c.get("deviceId")) for c in after["changes"]]
    assert ("twin.desired", ids[0]) in kinds and after["next"] > now["next"]
    assert next(c for c in after["changes"] if c["kind"] == "twin.desired")["patch"] == {"probe": 1}


def test_twin_items_are_the_twins_get_returns(service):
    """Twin items are built from the stored JSON text without parsing it: each must equal
    ``GET /twins/{id}``, member order included (fresh, empty and Unicode/nested twins)."""
    tag = uuid.uuid4().hex[:8]
    fresh = service.create_device()["deviceId"]
    full = service.create_device()["deviceId"]
    service.request("PATCH", f"/twins/{full}", json_body={
        "tags": {"run": tag, "ünï": {"a": [1, 2.5, None, "x\"y"]}, "empty": {}},
        "properties": {"desired": {"fw": "1.0", "nested": {"deep": {"n": -3}}, "text": "é\u2028\\\u0001",
                                   "big": 12345678901234567890, "small": 1.5e-300, "whole": 2.0, "t": True}}})
    r = _query(service, f"SELECT * FROM devices WHERE deviceId IN ['{fresh}', '{full}']")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    items = {t["deviceId"]: t for t in r.json()}
    assert set(items) == {fresh, full}
    for device_id, item in items.items():
        twin = service.request("GET", f"/twins/{device_id}").json()
        assert item == twin
        assert list(item) == list(twin)
        for section in ("desired", "reported"):
            assert list(item["properties"][section]) == list(twin["properties"][section])
