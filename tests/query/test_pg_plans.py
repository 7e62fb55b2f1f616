"""PostgreSQL plans of the hub's first page: the filter must carry the planner's statistics.

A ``jsonb_typeof(...) = 'string'`` test beside an indexed equality has no statistics: the
planner guessed 0.5% of the matches survive it and sorted every match of the index
instead of walking the primary key for the first 101 (11x slower than the same question
without it at 100,000 twins). The plan is checked, not the time.
"""

from __future__ import annotations

import asyncio
import json
import os

import asyncpg
import pytest

from iot_flows.store import open_store

COUNT = 50_000
FILTER = "SELECT * FROM devices WHERE properties.reported.firmware.version = '1.7.0'"
COLUMNS = [
    "device_id", "generation_id", "device_etag", "status_updated_time", "connection_state_updated_time",
    "last_activity_time", "tags", "desired", "reported", "twin_etag",
]  # fmt: skip


def _nodes(plan: dict) -> list[str]:
    return [plan["Node Type"], *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def _first_page_plan(url: str) -> list[str]:
    store = await open_store(url)
    try:
        conn = await asyncpg.connect(url)
        try:
            rows = [
                (f"device-{i:06d}", "g", "e", "t", "t", "t", "{}", "{}",
                 json.dumps({"firmware": {"version": f"1.{i % 20}.0"}}), "etag")  # fmt: skip
                for i in range(COUNT)
            ]
            await conn.copy_records_to_table("devices", records=rows, columns=COLUMNS)
            await conn.execute("CREATE INDEX ix_fw ON devices ((reported #> '{firmware,version}'))")
            await conn.execute("ANALYZE devices")
            sql, args = store.page_statement(store.compile_query(FILTER), limit=101)
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
            return _nodes(json.loads(plan)[0]["Plan"])
        finally:
            await conn.close()
    finally:
        await store.close()


def test_indexed_equality_first_page_walks_the_primary_key(backend, request):
    if backend != "postgresql":
        pytest.skip("PostgreSQL plan")
    url = request.getfixturevalue("pg_cluster").create_database(f"plans_{os.getpid()}")
    nodes = asyncio.run(_first_page_plan(url))
    assert "Sort" not in nodes, nodes
    assert nodes == ["Limit", "Index Scan"], nodes
