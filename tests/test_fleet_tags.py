"""Tags for simulated fleets: ``iot-flows fleet simulate --tags ... --spread ...`` (pure parts).

The end-to-end path (provision, PATCH the twins' tags, a deployment's condition matching
them) runs in tests/test_prefect_server.py.
"""

from __future__ import annotations

from collections import Counter

import pytest
import typer

from iot_flows.cli._fleet import _parse_spread, _parse_tags
from iot_flows.device import spread_tags

IDS = [f"sim-{i:05d}" for i in range(200)]


def test_tags_apply_to_every_device() -> None:
    tags = spread_tags(IDS[:3], _parse_tags("building=43,ring=canary"))
    assert tags == {d: {"building": "43", "ring": "canary"} for d in IDS[:3]}


def test_spreads_nest_like_the_demo_layout() -> None:
    spreads = [_parse_spread("building=43,44"), _parse_spread("ring=canary:1,wave1:9,wave2:90")]
    tags = spread_tags(IDS, {"fleet": "sim"}, spreads)
    assert Counter(t["building"] for t in tags.values()) == {"43": 100, "44": 100}
    assert Counter((t["building"], t["ring"]) for t in tags.values()) == {
        ("43", "canary"): 1, ("43", "wave1"): 9, ("43", "wave2"): 90,
        ("44", "canary"): 1, ("44", "wave1"): 9, ("44", "wave2"): 90,
    }  # fmt: skip
    assert all(t["fleet"] == "sim" for t in tags.values())
    # contiguous id ranges, in order: building 43 is the first half, its canary the first device
    assert tags[IDS[0]] == {"fleet": "sim", "building": "43", "ring": "canary"}
    assert tags[IDS[100]]["building"] == "44" and tags[IDS[100]]["ring"] == "canary"


def test_a_small_weight_still_gets_a_device() -> None:
    tags = spread_tags(IDS[:24], None, [_parse_spread("ring=canary:0.5,rest:99.5")])
    assert Counter(t["ring"] for t in tags.values()) == {"canary": 1, "rest": 23}


@pytest.mark.parametrize("text", ["building", "=43", "building=43,ring"])
def test_bad_tags_are_named(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="NAME=VALUE"):
        _parse_tags(text)


@pytest.mark.parametrize("text", ["ring", "ring=", "ring=canary:x", "ring=a:-1"])
def test_bad_spreads_are_named(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="NAME=VALUE"):
        _parse_spread(text)
