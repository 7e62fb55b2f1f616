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


async def _store_pages(url: str, records: list[DeviceRecord]) -> list[tuple[str, str, dict[str, object]]]:
    from iot_flows.store import open_store

    store = await open_store(url)
    try:
        for record in records:
            await store.insert(record)
        compiled = store.compile_query("SELECT * FROM devices")
        page = await store.query_twins(compiled, after="", limit=10)
        return [(device_id, text, (await store.get(device_id)).twin_json()) for device_id, text in page]  # type: ignore[union-attr]
    finally:
        await store.close()


def test_query_pages_of_either_store_hold_twin_json_in_its_member_order(make_db):
    """A page's twins leave the database as text (SQLite and PostgreSQL build it in SQL):
    each equals ``twin_json()`` of the stored record, member order included (but inside a
    section PostgreSQL's ``jsonb`` keeps its own member order)."""
    import asyncio

    records = [
        _record(),
        DeviceRecord(
            device_id="d-2", generation_id="g", device_etag="e", status_updated_time="t",
            tags={"a": {"b": [1, None, "x\"}"]}, "long-name": 1}, desired={"fw": "1.0", "n": 2.5, "z": {}},
            reported={"ü": {"deep": True}, "list": [1, {"k": "v"}]},
            desired_meta={"$lastUpdated": "t", "fw": {"$lastUpdated": "t", "$lastUpdatedVersion": 2}},
            reported_meta={"$lastUpdated": "t"}, desired_version=3, reported_version=4, twin_version=7,
            status_reason="why", model_id="dtmi:x;1", primary_thumbprint="AB", c2d_message_count=5,
        ),  # fmt: skip
        DeviceRecord(device_id="d-3", generation_id="g", device_etag="e", status_updated_time="t",
                     desired={"x": "$version", "$version": 99, "$metadata": 1}),  # never stored by the hub; still equal
    ]  # fmt: skip
    pages = asyncio.run(_store_pages(make_db(), records))
    assert [device_id for device_id, _, _ in pages] == sorted(r.device_id for r in records)
    for _, text, expected in pages:
        doc = json.loads(text)
        assert doc == expected
        assert list(doc) == list(expected)
        assert list(doc["properties"]) == ["desired", "reported"]
        assert list(doc["properties"]["reported"])[-2:] == ["$metadata", "$version"]
