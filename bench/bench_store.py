"""Store backends side by side: PostgreSQL vs SQLite, through the hub and as raw SQL, in one run.

    .venv/bin/python -m bench.bench_store [--count 100000] [--writes 500] [--repeat 5] [--hub-src DIR]

Starts a throw-away PostgreSQL 15 cluster (``tests/pgcluster``: ``fsync`` and
``synchronous_commit`` on) and a SQLite file, and for each backend measures:

* ``twin_write_p50_ms``: a service ``PATCH /twins/{id}`` through the hub's REST API,
  sequentially (each acknowledged only after its commit); ``store_update_twin_p50_ms``
  is the store call alone;
* with ``--count`` synthetic twins (``bench.bench_query.populate``: 20 firmware versions
  of 5% each) and each backend's recommended index on
  ``properties.reported.firmware.version`` (README "Query indexes"), through
  ``POST /devices/query``: ``filter_first_page`` (``SELECT * ... WHERE
  properties.reported.firmware.version = '1.7.0'``, first page of 100), ``group_by``
  (``... COUNT() ... GROUP BY properties.reported.firmware.version``) and
  ``unindexed_filter`` (first page of a filter no index covers: a full scan). Each is
  compared with ``raw_*``: the very statement and arguments the store runs for that page
  (``HubStore.page_statement``, printed under ``sql``), run directly on the same database
  (sqlite3 / one asyncpg connection).

For SQLite also ``update_twin_ms_one_commit_each`` vs ``update_twin_ms_one_commit_per_batch``:
what sharing one COMMIT among 1,000 compare-and-set twin writes would save (the
PostgreSQL store does it, group commit; SQLite does not). Seeding (``seed_seconds``)
writes straight into the store's tables (``executemany`` / ``COPY``), not through REST.

The hub answering the queries runs as deployed, ``hub serve`` in its own process
(uvloop and httptools from the ``hub`` extra when installed; ``--embedded``: in a thread
of this process, sharing the client's GIL); ``--hub-src DIR`` also times another
revision's hub on the same database right after (``before`` in the output). SQLite's
``unindexed_filter`` runs the plain statement as its baseline; on 250,000 twins and more
the hub answers it with an adaptive plan (``store/_sqlite_scan.py``: same rows).

REST calls are timed over one keep-alive ``http.client`` connection, reading the body
unparsed (the raw side gets rows, not objects), and alternate with the raw statement run
by run. Prints one JSON object (medians in milliseconds, ``*_best`` the fastest run, less
sensitive to a shared machine), ``rest_over_raw`` (medians) and ``rest_over_raw_best``,
and the ratios PostgreSQL / SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench._procs import Hub as HubProc
from bench.bench_query import FILTER, GROUP, TS
from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.store import DeviceRecord, open_store
from tests.pgcluster import PgCluster
from tests.support import Service

SQLITE_INDEX = (
    "CREATE INDEX ix_fw ON devices(json_extract(reported, '$.firmware.version'), "
    "json_type(reported, '$.firmware.version'))"
)
PG_INDEX = "CREATE INDEX ix_fw ON devices ((reported #> '{firmware,version}'))"
#: Not covered by any index: a full scan (25 matches in 1,000,000 twins, 2 in 100,000).
UNINDEXED = (
    "SELECT * FROM devices WHERE properties.reported.telemetryConfig.sendFrequencyInSecs = 30 "
    "AND tags.location.building = '0' AND properties.reported.battery = 0"
)
#: name -> (query text, page size asked through REST)
QUERIES = {"filter_first_page": (FILTER, 100), "group_by": (GROUP, 1000), "unindexed_filter": (UNINDEXED, 100)}


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


def _raw_runner(backend: str, db: str) -> tuple[Callable[[str, tuple[Any, ...]], Any], Callable[[], None]]:
    if backend == "sqlite":
        conn = sqlite3.connect(db)
        return (lambda sql, args: conn.execute(sql, args).fetchall()), conn.close
    loop = asyncio.new_event_loop()
    pg = loop.run_until_complete(asyncpg.connect(db))
    return (lambda sql, args: loop.run_until_complete(pg.fetch(sql, *args))), (
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


async def sqlite_commit_sharing(path: str, devices: int = 1000) -> dict[str, float]:
    """Would group commit help SQLite? ms per compare-and-set twin write, one COMMIT each vs
    one COMMIT shared by ``devices`` writes (WAL, synchronous=NORMAL: a COMMIT is no fsync)."""
    store = await open_store(path)
    try:
        ids = [f"gc-{i:05d}" for i in range(devices)]
        async with store.transaction():
            for device_id in ids:
                await store.insert(DeviceRecord(device_id=device_id, generation_id="1", device_etag="e",
                                                status_updated_time=TS))  # fmt: skip
        records = await store.get_many(ids)
        out: dict[str, list[float]] = {"update_twin_ms_one_commit_each": [], "update_twin_ms_one_commit_per_batch": []}
        for _ in range(3):
            for name in out:
                start = time.perf_counter()
                if name == "update_twin_ms_one_commit_each":
                    for r in records:
                        r.reported = {"n": r.twin_version}
                        await store.update_twin(r, expected_version=r.twin_version)
                        r.twin_version += 1
                else:
                    async with store.transaction():
                        for r in records:
                            r.reported = {"n": r.twin_version}
                            await store.update_twin(r, expected_version=r.twin_version)
                            r.twin_version += 1
                out[name].append((time.perf_counter() - start) * 1000 / devices)
        return {name: round(statistics.median(v), 4) for name, v in out.items()}
    finally:
        await store.close()


_STATEMENTS = """
import asyncio, json, sys
from iot_flows.store import open_store
async def main():
    store = await open_store(sys.argv[1])
    try:
        out = {}
        for name, (text, size) in json.loads(sys.argv[2]).items():
            sql, args = store.page_statement(store.compile_query(text), limit=size + 1)
            out[name] = [sql, list(args)]
        print(json.dumps(out))
    finally:
        await store.close()
asyncio.run(main())
"""


def _statements(db: str, src: str | None) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Each query's first-page statement and arguments (``page_statement``, one row more than
    the page) as the hub of ``src`` (another revision's ``iot_flows``; None: this one) runs it."""
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    text = subprocess.run(
        [sys.executable, "-c", _STATEMENTS, db, json.dumps(QUERIES)], env=env, cwd=src or None,
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {name: (sql, tuple(args)) for name, (sql, args) in json.loads(text).items()}


def queries(backend: str, db: str, repeat: int, *, hub_src: str | None = None, embedded: bool = False) -> dict[str, Any]:
    """Query latencies through ``POST /devices/query`` and, as the baseline, the very statement
    the store runs for that first page (``HubStore.page_statement``, same arguments), run
    directly on the same database (``raw_*``; the statements are in ``sql``). They
    alternate run by run in a shuffled order, so a busy machine weighs on all alike.

    The hub runs as deployed: ``hub serve`` in its own process (uvloop and httptools when
    installed, the ``hub`` extra); ``embedded`` runs it in a thread of this process instead
    (an ``EmbeddedHub``: it shares this process's GIL with the client). With ``hub_src``
    (another revision's ``iot_flows``) that revision's hub serves the same database too,
    timed in the same rounds (``before`` in the output, with its own statements' ``raw_*``)."""
    out: dict[str, Any] = {"hub": "embedded" if embedded else "process"}
    rng = random.Random(13)
    with contextlib.ExitStack() as stack:
        urls: dict[str, tuple[str, str]] = {}
        if embedded:
            embedded_hub = stack.enter_context(EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=db)))
            urls[""] = (embedded_hub.base_url, embedded_hub.connection_string())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for label, src in (("", None), ("before", hub_src)):
            if (label == "" and embedded) or (label == "before" and not src):
                continue
            proc = HubProc(tmp, db=db, src=src)
            stack.callback(proc.stop)
            urls[label] = (proc.base_url, str(proc.cs))
        statements = {label: _statements(db, hub_src if label else None) for label in urls}
        run, close = _raw_runner(backend, db)
        stack.callback(close)

        # Timed calls go over one keep-alive http.client connection per hub and read the
        # body without parsing it (the raw side gets rows, not objects): the hub's cost,
        # not a client library's. The item count is checked once through the test client.
        def client(base_url: str, cs: str) -> Callable[[str, int], bytes]:
            svc = Service(base_url, cs)
            stack.callback(svc.close)
            token = svc.cs.token()
            conn = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=600)
            stack.callback(conn.close)

            def rest(text: str, size: int, *, retry: bool = True) -> bytes:
                body = json.dumps({"query": text}).encode()
                try:
                    conn.request("POST", "/devices/query?api-version=2021-04-12", body=body, headers={
                        "Authorization": token, "Content-Type": "application/json", "x-ms-max-item-count": str(size)})  # fmt: skip
                    r = conn.getresponse()
                except (http.client.RemoteDisconnected, ConnectionError):
                    # uvicorn closes a connection idle for 5 s (a slow raw statement in between)
                    conn.close()
                    if not retry:
                        raise
                    return rest(text, size, retry=False)
                data = r.read()
                assert r.status == 200, data
                return data

            r = svc.request("POST", "/devices/query", json_body={"query": FILTER}, headers={"x-ms-max-item-count": "100"})
            assert r.status_code == 200, r.text
            return rest

        clients = {label: client(*url) for label, url in urls.items()}

        def timed(fn: Callable[[], Any]) -> float:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        rows = {label: out if not label else out.setdefault(label, {}) for label in urls}
        for row in rows.values():
            row["sql"] = {}
        for name, (text, size) in QUERIES.items():
            work: dict[tuple[str, str], Callable[[], Any]] = {}
            for label, rest in clients.items():
                sql, args = statements[label][name]
                rows[label]["sql"][name] = sql
                rows[label][f"{name}_items"] = len(json.loads(rest(text, size)))  # also warms caches
                rows[label][f"raw_{name}_rows"] = len(run(sql, args))
                work[(label, name)] = lambda rest=rest: rest(text, size)  # type: ignore[misc]  # noqa: B023
                work[(label, f"raw_{name}")] = lambda sql=sql, args=args: run(sql, args)  # type: ignore[misc]
            times: dict[tuple[str, str], list[float]] = {key: [] for key in work}
            for _ in range(repeat):
                order = list(work)
                rng.shuffle(order)
                for key in order:
                    times[key].append(timed(work[key]))
            for (label, key), values in times.items():
                rows[label][key] = round(statistics.median(values) * 1000, 3)
                rows[label][f"{key}_best"] = round(min(values) * 1000, 3)
    return out


def _ratios(row: dict[str, Any], suffix: str = "") -> dict[str, float]:
    return {q: round(row[f"{q}{suffix}"] / row[f"raw_{q}{suffix}"], 2) for q in QUERIES if row.get(f"raw_{q}{suffix}")}


def main(count: int, writes: int, repeat: int, hub_src: str | None = None, embedded: bool = False,
         backends: tuple[str, ...] = ("sqlite", "postgresql")) -> None:
    result: dict[str, Any] = {"benchmark": "store_backends", "devices": count, "writes": writes, "repeat": repeat}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, PgCluster() as pg:
        dbs = {"sqlite": str(Path(tmp) / "hub.db"), "postgresql": pg.create_database("bench")}
        writes_db = {"sqlite": str(Path(tmp) / "writes.db"), "postgresql": pg.create_database("writes")}
        for backend in backends:
            row = twin_writes(writes_db[backend], writes) if writes > 0 else {}
            if backend == "sqlite" and writes > 0:
                row.update(asyncio.run(sqlite_commit_sharing(str(Path(tmp) / "group-commit.db"))))
            start = time.perf_counter()
            if backend == "sqlite":
                _seed_sqlite(dbs[backend], count)
            else:
                asyncio.run(_seed_pg(dbs[backend], count))
            row["seed_seconds"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            row.update(queries(backend, dbs[backend], repeat, hub_src=hub_src, embedded=embedded))
            row["query_phase_seconds"] = round(time.perf_counter() - start, 2)
            if hub_src:  # the other revision's hub on the same database, in the same rounds
                before = row["before"]
                before["rest_over_raw"], before["rest_over_raw_best"] = _ratios(before), _ratios(before, "_best")
            result[backend] = row
    if len(backends) == 2:
        s, p = result["sqlite"], result["postgresql"]
        result["postgresql_over_sqlite"] = {
            key: round(p[key] / s[key], 2)
            for key in ("twin_write_p50_ms", "store_update_twin_p50_ms", *QUERIES)
            if s.get(key) and p.get(key)
        }
    result["rest_over_raw"] = {b: _ratios(result[b]) for b in backends}
    result["rest_over_raw_best"] = {b: _ratios(result[b], "_best") for b in backends}
    if hub_src:
        result["before_rest_over_raw"] = {b: result[b]["before"]["rest_over_raw"] for b in backends}
        result["before_rest_over_raw_best"] = {b: result[b]["before"]["rest_over_raw_best"] for b in backends}
    result["run_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="synthetic twins for the query part")
    parser.add_argument("--writes", type=int, default=500, help="sequential twin writes per backend")
    parser.add_argument("--repeat", type=int, default=5, help="runs per query (median reported)")
    parser.add_argument("--hub-src", help="also measure the queries with another revision's hub on the same "
                        "database (a directory holding its iot_flows, e.g. `git archive <rev> iot_flows | tar -x -C dir`)")
    parser.add_argument("--embedded", action="store_true",
                        help="run the hub in a thread of this process (shares its GIL) instead of `hub serve`")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma list: sqlite, postgresql")
    args = parser.parse_args()
    main(args.count, args.writes, args.repeat, args.hub_src, args.embedded, tuple(args.backends.split(",")))
