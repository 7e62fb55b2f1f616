"""The change feed's ring (issue 12 item 4, soak memory): compact, bounded, read back whole.

The 10-minute soak found the ring of 50,000 changes held ~550 bytes per entry as nested
dicts (RSS still growing after warm-up); entries are now compact JSON bytes.
"""

from __future__ import annotations

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._changes import ChangeFeed
from iot_flows.hub._embedded import EmbeddedHub
from tests.reliability.change_feed_memory import bytes_per_entry
from tests.support import Service


def test_ring_keeps_the_newest_changes_in_order_and_reports_truncation() -> None:
    feed = ChangeFeed(capacity=3)
    assert feed.read(0, 10) == ([], False)
    for i in range(5):
        feed.append({"kind": "twin.reported", "deviceId": f"d{i}", "patch": {"n": i, "s": "é"}, "version": i})
    assert feed.last_sequence == 5 and len(feed) == 3 and feed.oldest_sequence == 3
    changes, truncated = feed.read(0, 10)
    assert truncated
    assert [c["sequence"] for c in changes] == [3, 4, 5]
    assert changes[0]["patch"] == {"n": 2, "s": "é"} and changes[0]["deviceId"] == "d2"
    assert list(changes[0]) == ["sequence", "time", "kind", "deviceId", "patch", "version"]
    assert feed.read(3, 1) == ([changes[1]], False)
    assert feed.read(5, 10) == ([], False)


def test_ring_rejects_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ChangeFeed(capacity=0)


def test_a_full_ring_holds_at_most_250_bytes_per_soak_shaped_change() -> None:
    measured = bytes_per_entry(20_000, capacity=10_000)  # wrapped twice: only what a full ring keeps
    assert measured["read_back"] == 10_000
    assert measured["bytes_held"] / 10_000 <= 250, measured  # was ~550 as dicts


def test_hub_serve_change_feed_capacity_bounds_what_the_endpoint_returns(tmp_path) -> None:
    settings = HubSettings(mqtt_port=0, http_port=0, db=str(tmp_path / "hub.db"), change_feed_capacity=4)
    with EmbeddedHub(settings) as hub:
        service = Service(hub.base_url, hub.connection_string())
        try:
            service.create_device("feed-1")
            for i in range(6):
                r = service.request("PATCH", "/twins/feed-1?api-version=2021-04-12",
                                    json_body={"properties": {"desired": {"n": i}}})
                assert r.status_code == 200, r.text
            body = service.request("GET", "/iot-flows/changes?since=0").json()
        finally:
            service.close()
    assert body["truncated"] is True
    assert [c["patch"] for c in body["changes"]] == [{"n": i} for i in range(2, 6)]
    assert body["next"] == body["changes"][-1]["sequence"]
