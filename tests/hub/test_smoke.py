def test_twin_roundtrip(devices, service):
    dev = devices()
    status, twin = dev.get_twin()
    assert status == 200
    assert twin["desired"]["$version"] == 1
    status, topic = dev.patch_reported({"a": {"b": 1}})
    assert status == 204 and topic.endswith("&$version=2")
    r = service.request("GET", f"/twins/{dev.device_id}")
    assert r.json()["properties"]["reported"]["a"] == {"b": 1}
