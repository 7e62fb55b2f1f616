"""Twins over REST and MQTT: merge semantics, versions, etags, limits, notifications."""

from __future__ import annotations

import json

import pytest

from tests.support import error_code


def _twin(service, device_id):
    r = service.request("GET", f"/twins/{device_id}")
    assert r.status_code == 200, r.text
    return r.json()


def _patch(service, device_id, body, **headers):
    return service.request("PATCH", f"/twins/{device_id}", json_body=body, headers=headers)


def test_new_twin_shape(service):
    device_id = service.create_device()["deviceId"]
    twin = _twin(service, device_id)
    assert twin["deviceId"] == device_id
    assert twin["status"] == "enabled" and twin["connectionState"] == "Disconnected"
    assert twin["properties"]["desired"]["$version"] == 1
    assert twin["properties"]["reported"]["$version"] == 1
    assert twin["tags"] == {} and isinstance(twin["etag"], str) and twin["version"] >= 1


def test_patch_merges_deletes_with_null_and_returns_full_twin(service):
    device_id = service.create_device()["deviceId"]
    r = _patch(service, device_id, {"tags": {"location": {"building": "43", "floor": "1"}},
                                     "properties": {"desired": {"cfg": {"a": 1, "b": 2}, "old": True}}})
    assert r.status_code == 200
    body = r.json()
    assert body["tags"]["location"] == {"building": "43", "floor": "1"}
    assert body["properties"]["desired"]["cfg"] == {"a": 1, "b": 2}
    r = _patch(service, device_id, {"tags": {"location": {"floor": None}},
                                     "properties": {"desired": {"cfg": {"b": None, "c": [1, 2]}, "old": None}}})
    desired = r.json()["properties"]["desired"]
    assert r.json()["tags"]["location"] == {"building": "43"}
    assert desired["cfg"] == {"a": 1, "c": [1, 2]} and "old" not in desired
    # arrays are leaves: a new array replaces the old one
    r = _patch(service, device_id, {"properties": {"desired": {"cfg": {"c": [3]}}}})
    assert r.json()["properties"]["desired"]["cfg"]["c"] == [3]


def test_every_desired_patch_bumps_version_by_one_even_without_change(service):
    device_id = service.create_device()["deviceId"]
    versions = []
    for _ in range(3):
        r = _patch(service, device_id, {"properties": {"desired": {"same": 1}}})
        versions.append(r.json()["properties"]["desired"]["$version"])
    assert versions == [2, 3, 4]
    r = _patch(service, device_id, {"tags": {"t": 1}})
    assert r.json()["properties"]["desired"]["$version"] == 4  # tags do not touch desired


def test_desired_metadata_at_every_level(service):
    device_id = service.create_device()["deviceId"]
    r = _patch(service, device_id, {"properties": {"desired": {"telemetryConfig": {"sendFrequency": "5m"}}}})
    meta = r.json()["properties"]["desired"]["$metadata"]
    assert meta["$lastUpdatedVersion"] == 2
    node = meta["telemetryConfig"]
    assert node["$lastUpdatedVersion"] == 2 and node["$lastUpdated"].endswith("Z")
    assert node["sendFrequency"]["$lastUpdatedVersion"] == 2


def test_etag_if_match_rules(service):
    device_id = service.create_device()["deviceId"]
    etag = _twin(service, device_id)["etag"]
    ok = _patch(service, device_id, {"tags": {"a": 1}}, **{"If-Match": f'"{etag}"'})
    assert ok.status_code == 200 and ok.json()["etag"] != etag
    stale = _patch(service, device_id, {"tags": {"a": 2}}, **{"If-Match": f'"{etag}"'})
    assert stale.status_code == 412 and error_code(stale) == 412001
    assert stale.headers["iothub-errorcode"] == "PreconditionFailed"
    bogus = _patch(service, device_id, {"tags": {"a": 3}}, **{"If-Match": '"abc"'})
    assert bogus.status_code == 412
    star = _patch(service, device_id, {"tags": {"a": 4}}, **{"If-Match": '"*"'})
    assert star.status_code == 200
    assert _twin(service, device_id)["tags"]["a"] == 4


def test_put_replaces_tags_and_desired(service):
    device_id = service.create_device()["deviceId"]
    _patch(service, device_id, {"tags": {"keep": 1}, "properties": {"desired": {"a": 1, "b": 2}}})
    r = service.request("PUT", f"/twins/{device_id}", json_body={"tags": {"new": 1}, "properties": {"desired": {"c": 3}}})
    assert r.status_code == 200
    twin = r.json()
    assert twin["tags"] == {"new": 1}
    assert {k: v for k, v in twin["properties"]["desired"].items() if not k.startswith("$")} == {"c": 3}


@pytest.mark.parametrize(
    "desired",
    [
        {"bad.key": 1},
        {"bad$key": 1},
        {"bad key": 1},
        # 11 nested objects (10 are allowed: D-TWIN's depth-10 example, tests/hub/test_limits.py)
        {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": {"l7": {"l8": {"l9": {"l10": {"l11": {"l12": 1}}}}}}}}}}}},
        {"big": "x" * 5000},
        {"n": 2**53},
    ],
    ids=["dot", "dollar", "space", "depth11", "string4k", "int-range"],
)
def test_limits_reject_with_400_and_store_nothing(service, desired):
    device_id = service.create_device()["deviceId"]
    before = _twin(service, device_id)
    r = _patch(service, device_id, {"properties": {"desired": desired}})
    assert r.status_code == 400, r.text
    assert error_code(r) == 400004
    after = _twin(service, device_id)
    assert after["etag"] == before["etag"]
    assert after["properties"]["desired"]["$version"] == before["properties"]["desired"]["$version"]


def test_depth_ten_is_allowed(service):
    device_id = service.create_device()["deviceId"]
    deep: dict = {"v": 1}
    for i in range(9):
        deep = {f"l{i}": deep}
    assert _patch(service, device_id, {"tags": deep}).status_code == 200


def test_section_size_limits(service):
    device_id = service.create_device()["deviceId"]
    tags = {f"k{i}": "x" * 1000 for i in range(9)}  # > 8 KB of tags
    r = _patch(service, device_id, {"tags": tags})
    assert r.status_code == 400 and error_code(r) == 400004
    desired = {f"k{i}": "x" * 4000 for i in range(7)}  # ~28 KB: fine
    assert _patch(service, device_id, {"properties": {"desired": desired}}).status_code == 200
    more = {f"m{i}": "x" * 4000 for i in range(2)}  # pushes desired over 32 KB after the merge
    r = _patch(service, device_id, {"properties": {"desired": more}})
    assert r.status_code == 400
    assert "m0" not in _twin(service, device_id)["properties"]["desired"]


def test_malformed_json_and_reported_writes_are_refused(service):
    device_id = service.create_device()["deviceId"]
    r = service.request("PATCH", f"/twins/{device_id}", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_code(r) == 400006
    r = _patch(service, device_id, {"properties": {"reported": {"x": 1}}})
    assert r.status_code == 400


def test_unknown_twin_is_404_device_not_found(service):
    r = service.request("GET", "/twins/nobody-here")
    assert r.status_code == 404
    assert r.json()["Message"].startswith("ErrorCode:DeviceNotFound;")
    assert r.headers["iothub-errorcode"] == "DeviceNotFound"


# ---- device side (MQTT) -------------------------------------------------------------
def test_device_get_has_desired_and_reported_without_tags(devices, service):
    dev = devices()
    _patch(service, dev.device_id, {"tags": {"secret": 1}, "properties": {"desired": {"d": 1}}})
    status, body = dev.get_twin()
    assert status == 200
    assert set(body) == {"desired", "reported"}
    assert body["desired"]["d"] == 1 and body["desired"]["$version"] == 2
    assert "secret" not in json.dumps(body)


def test_reported_patch_is_committed_before_204(devices, service):
    dev = devices()
    for i in range(1, 6):
        status, topic = dev.patch_reported({"counter": i, "nested": {f"k{i}": i}})
        assert status == 204
        assert topic.endswith(f"$version={i + 1}")
        reported = _twin(service, dev.device_id)["properties"]["reported"]
        assert reported["counter"] == i  # read-your-writes right after the 204
    assert reported["nested"] == {f"k{i}": i for i in range(1, 6)}
    status, _ = dev.patch_reported({"nested": None})
    assert "nested" not in _twin(service, dev.device_id)["properties"]["reported"]
    meta = _twin(service, dev.device_id)["properties"]["reported"]["$metadata"]
    assert "$lastUpdated" in meta and "$lastUpdatedVersion" not in meta["counter"]


@pytest.mark.parametrize("raw,status", [(b"{oops", 400), (b'{"a.b": 1}', 400), (b"[1,2]", 400),
                                        (json.dumps({f"k{i}": "x" * 4000 for i in range(9)}).encode(), 413)])
def test_bad_reported_patches_store_nothing(devices, service, raw, status):
    dev = devices()
    before = _twin(service, dev.device_id)
    got, _ = dev.patch_reported(None, raw=raw)
    assert got == status
    after = _twin(service, dev.device_id)
    assert after["properties"]["reported"]["$version"] == before["properties"]["reported"]["$version"]
    assert after["etag"] == before["etag"]


def test_desired_change_is_pushed_with_version_and_nulls(devices, service):
    dev = devices()
    _patch(service, dev.device_id, {"properties": {"desired": {"a": 1, "b": {"c": 2}}}})
    msg = dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"))
    assert msg.topic == "$iothub/twin/PATCH/properties/desired/?$version=2"
    assert json.loads(msg.payload) == {"a": 1, "b": {"c": 2}, "$version": 2}
    _patch(service, dev.device_id, {"properties": {"desired": {"a": None}}})
    msg = dev.wait_message(lambda m: "$version=3" in m.topic)
    assert json.loads(msg.payload) == {"a": None, "$version": 3}
    # A full replacement names every removed key as null.
    service.request("PUT", f"/twins/{dev.device_id}", json_body={"properties": {"desired": {"z": 9}}})
    msg = dev.wait_message(lambda m: "$version=4" in m.topic)
    assert json.loads(msg.payload) == {"b": None, "z": 9, "$version": 4}


def test_twin_responses_need_the_response_subscription(devices):
    dev = devices(subscribe=False)
    dev.client.publish("$iothub/twin/GET/?$rid=1", b" ", qos=1)
    with pytest.raises(TimeoutError):
        dev.wait_message(timeout=0.5)
    dev.subscribe("$iothub/twin/res/#")
    assert dev.get_twin()[0] == 200


def test_fifty_overlapping_gets_are_answered_to_their_own_rid(devices):
    dev = devices()
    rids = [f"rid-{i}" for i in range(50)]
    for rid in rids:
        dev.client.publish(f"$iothub/twin/GET/?$rid={rid}", b" ", qos=1)
    seen = set()
    for _ in rids:
        msg = dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/res/200/"))
        seen.add(msg.topic.split("$rid=")[1])
    assert seen == set(rids)
