"""Store backends side by side: PostgreSQL vs SQLite, through the hub and as raw SQL, in one run.

    .venv/bin/python -m bench.bench_store [--count 100000] [--writes 500] [--repeat 5]

Starts a throw-away PostgreSQL 15 cluster (``tests/pgcluster``: ``fsync`` and
``synchronous_commit`` on) and a SQLite file, and for each backend measures:

* ``twin_write_p50_ms``: a service ``PATCH /twins/{id}`` through the hub's REST API,
  sequentially (each acknowledged only after its commit); ``store_update_twin_p50_ms``
  is the store call alone;
* with ``--count`` synthetic twins (``bench.bench_query.populate``: 20 firmware versions
  of 5% each) and each backend's recommended index on
  ``properties.reported.firmware.version`` (README "Query indexes"):
  ``filter_first_page`` (``SELECT * ... WHERE properties.reported.firmware.version =
  '1.7.0'``, first page of 100 through ``POST /devices/query``) and ``group_by``
  (``... COUNT() ... GROUP BY properties.reported.firmware.version``), each against the
  same question as hand-written raw SQL on the same database (``raw_*``).

Prints one JSON object (medians in milliseconds) and the ratios PostgreSQL / SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import asyncpg

from bench.bench_query import FILTER, GROUP, TS
from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.store import open_store
from tests.pgcluster import PgCluster
from tests.support import Service

SQLITE_INDEX = (
    "CREATE INDEX ix_fw ON devices(json_extract(reported, '$.firmware.version'), "
    "json_type(reported, '$.firmware.version'))"
)
PG_INDEX = "CREATE INDEX ix_fw ON devices ((reported #> '{firmware,version}'))"
RAW = {
    "sqlite": {
        "filter_first_page": "SELECT * FROM devices WHERE json_extract(reported, '$.firmware.version') = '1.7.0' "
        "ORDER BY device_id LIMIT 100",
        "group_by": "SELECT json_extract(reported, '$.firmware.version') AS v, COUNT(*) FROM devices GROUP BY v",
    },
    "postgresql": {
        "filter_first_page": "SELECT * FROM devices WHERE reported #> '{firmware,version}' = '\"1.7.0\"' "
        "ORDER BY device_id LIMIT 100",
        "group_by": "SELECT reported #>> '{firmware,version}' AS v, COUNT(*) FROM devices GROUP BY v",
    },
}


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


_SEED_COLUMNS = (
    "device_id", "generation_id", "device_etag", "status_updated_time", "connection_state_updated_time",
    "last_activity_time", "tags", "desired", "reported", "twin_etag",
)  # fmt: skip
_CHUNK = 50_000


def seed_rows(count: int) -> Iterator[list[tuple[Any, ...]]]:
    """The twins ``bench_query.populate`` writes (same values), in chunks, without holding them all."""
    regions = ["us", "eu", "apac", "latam", "mea"]
    desired = json.dumps({"telemetryConfig": {"sendFrequency": "5m"}}, separators=(",", ":"))
    for first in range(0, count, _CHUNK):
        chunk = []
        for i in range(first, min(first + _CHUNK, count)):
            reported = {
                "firmware": {"version": "9.9.9" if i % 10_000 == 5 else f"1.{i % 20}.0", "status": "current"},
                "telemetryConfig": {"sendFrequencyInSecs": 30 + i % 90, "status": "Success" if i % 7 else "Pending"},
                "battery": i % 100,
            }
            tags = {"location": {"region": regions[i % 5], "building": str(i % 43)}, "owner": f"team-{i % 12}"}
            chunk.append((
                f"device-{i:06d}", "g", "e", TS, TS, TS, json.dumps(tags, separators=(",", ":")), desired,
                json.dumps(reported, separators=(",", ":")), "AAAAAAAAAAE=",
            ))  # fmt: skip
        yield chunk


async def _seed_pg(url: str, count: int) -> None:
    """COPY the twins straight into the store's ``devices`` table, then index and ANALYZE."""
    store = await open_store(url)  # creates the schema
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        for chunk in seed_rows(count):
            await conn.copy_records_to_table("devices", records=chunk, columns=list(_SEED_COLUMNS))
        await conn.execute(PG_INDEX)
        await conn.execute("ANALYZE devices")
    finally:
        await conn.close()


def _seed_sqlite(path: str, count: int) -> None:
    """executemany straight into the store's ``devices`` table (schema from the store), then index."""
    asyncio.run(_close_new_store(path))
    conn = sqlite3.connect(path)
    marks = ",".join("?" * len(_SEED_COLUMNS))
    for chunk in seed_rows(count):
        conn.executemany(f"INSERT INTO devices ({', '.join(_SEED_COLUMNS)}) VALUES ({marks})", chunk)
        conn.commit()
    conn.execute(SQLITE_INDEX)
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


async def _close_new_store(path: str) -> None:
    store = await open_store(path)  # creates the schema
    await store.close()


def _raw_runner(backend: str, db: str) -> tuple[Callable[[str], Any], Callable[[], None]]:
    if backend == "sqlite":
        conn = sqlite3.connect(db)
        return (lambda sql: conn.execute(sql).fetchall()), conn.close
    loop = asyncio.new_event_loop()
    pg = loop.run_until_complete(asyncpg.connect(db))
    return (lambda sql: loop.run_until_complete(pg.fetch(sql))), (
        lambda: (loop.run_until_complete(pg.close()), loop.close())  # type: ignore[func-returns-value]
    )


def twin_writes(db: str, writes: int) -> dict[str, float]:
    """Sequential service twin PATCHes through the hub, and store calls alone."""
    with EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=db)) as hub:
        svc = Service(hub.base_url, hub.connection_string())
        svc.create_device("w-0")
        times = []
        for i in range(writes):
            start = time.perf_counter()
            r = svc.request("PATCH", "/twins/w-0", json_body={"tags": {"n": i}, "properties": {"desired": {"d": i}}})
            times.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
        svc.close()

        async def store_writes() -> list[float]:
            store = hub.hub.store
            record = await store.get("w-0")
            assert record is not None
            out = []
            for i in range(writes):
                record.tags = {"n": i}
                record.twin_version += 1
                start = time.perf_counter()
                await store.update_twin(record)
                out.append(time.perf_counter() - start)
            return out

        store_times = hub.call(store_writes)
    return {
        "twin_write_p50_ms": round(statistics.median(times) * 1000, 3),
        "store_update_twin_p50_ms": round(statistics.median(store_times) * 1000, 3),
    }


def queries(backend: str, db: str, repeat: int) -> dict[str, Any]:
    """Query latencies through ``POST /devices/query`` and as raw SQL on the same database."""
    out: dict[str, Any] = {}
    with EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=db)) as hub:
        svc = Service(hub.base_url, hub.connection_string())

        def rest(text: str, size: int | None = None) -> list[Any]:
            headers = {"x-ms-max-item-count": str(size)} if size else None
            r = svc.request("POST", "/devices/query", json_body={"query": text}, headers=headers)
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

        out["filter_first_page_items"] = len(rest(FILTER, 100))
        out["group_by_groups"] = len(rest(GROUP, 1000))
        out["filter_first_page"] = median_ms(lambda: rest(FILTER, 100), repeat)
        out["group_by"] = median_ms(lambda: rest(GROUP, 1000), repeat)
        svc.close()
    run, close = _raw_runner(backend, db)
    try:
        for name, sql in RAW[backend].items():
            out[f"raw_{name}_rows"] = len(run(sql))
            out[f"raw_{name}"] = median_ms(lambda: run(sql), repeat)  # noqa: B023
    finally:
        close()
    return out


def main(count: int, writes: int, repeat: int) -> None:
    result: dict[str, Any] = {"benchmark": "store_backends", "devices": count, "writes": writes, "repeat": repeat}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, PgCluster() as pg:
        dbs = {"sqlite": str(Path(tmp) / "hub.db"), "postgresql": pg.create_database("bench")}
        writes_db = {"sqlite": str(Path(tmp) / "writes.db"), "postgresql": pg.create_database("writes")}
        for backend in ("sqlite", "postgresql"):
            row = twin_writes(writes_db[backend], writes)
            start = time.perf_counter()
            if backend == "sqlite":
                _seed_sqlite(dbs[backend], count)
            else:
                asyncio.run(_seed_pg(dbs[backend], count))
            row["seed_seconds"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            row.update(queries(backend, dbs[backend], repeat))
            row["query_phase_seconds"] = round(time.perf_counter() - start, 2)
            result[backend] = row
    s, p = result["sqlite"], result["postgresql"]
    result["postgresql_over_sqlite"] = {
        key: round(p[key] / s[key], 2)
        for key in ("twin_write_p50_ms", "store_update_twin_p50_ms", "filter_first_page", "group_by")
        if s.get(key)
    }
    result["rest_over_raw"] = {
        b: {q: round(result[b][q] / result[b][f"raw_{q}"], 2) for q in ("filter_first_page", "group_by")}
        for b in ("sqlite", "postgresql")
    }
    result["run_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="synthetic twins for the query part")
    parser.add_argument("--writes", type=int, default=500, help="sequential twin writes per backend")
    parser.add_argument("--repeat", type=int, default=5, help="runs per query (median reported)")
    args = parser.parse_args()
    main(args.count, args.writes, args.repeat)
