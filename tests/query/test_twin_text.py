"""Twin query items are JSON text spliced from the stored columns: same document as ``twin_json``."""

from __future__ import annotations

import json

from iot_flows.store import DeviceRecord
from iot_flows.store._rows import COLUMNS, JSON_COLUMNS, dumps, twin_json_text


def _row(record: DeviceRecord, *, spaced: bool = False) -> tuple[object, ...]:
    def text(value: object) -> str:
        # PostgreSQL's jsonb output has spaces after ':' and ','
        return json.dumps(value, ensure_ascii=False) if spaced else dumps(value)

    return tuple(text(getattr(record, c)) if c in JSON_COLUMNS else getattr(record, c) for c in COLUMNS)


def _record(**twin: object) -> DeviceRecord:
    return DeviceRecord(device_id="d-é", generation_id="g", device_etag="e", status_updated_time="t", **twin)  # type: ignore[arg-type]


def test_same_document_and_member_order_as_twin_json():
    records = [
        _record(),
        _record(
            tags={"a": {"b": [1, None, "x\"}"]}},
            desired={"fw": "1.0", "n": 2.5},
            reported={"ü": {"deep": True}},
            desired_meta={"$lastUpdated": "t", "fw": {"$lastUpdated": "t", "$lastUpdatedVersion": 2}},
            reported_meta={"$lastUpdated": "t"},
            desired_version=3, reported_version=4, twin_version=7, status_reason="why", model_id="dtmi:x;1",
        ),  # fmt: skip
    ]
    for record in records:
        for spaced in (False, True):
            text = twin_json_text(_row(record, spaced=spaced))
            doc = json.loads(text)
            assert doc == record.twin_json()
            assert list(doc) == list(record.twin_json())
            assert list(doc["properties"]["desired"]) == list(record.twin_json()["properties"]["desired"])


def test_a_section_holding_reserved_names_falls_back_to_the_exact_merge():
    record = _record(desired={"x": "$version", "$version": 99})  # never stored by the hub; still exact
    assert json.loads(twin_json_text(_row(record))) == record.twin_json()


def test_empty_sections_spelled_with_spaces():
    record = _record()
    row = list(_row(record))
    for column in ("desired", "reported", "desired_meta"):
        row[COLUMNS.index(column)] = " { } "
    assert json.loads(twin_json_text(row)) == record.twin_json()
