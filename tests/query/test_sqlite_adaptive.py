"""SQLite twin pages: the adaptive plan for filters no index serves, and pages run on the
event loop within a time budget. Both return exactly the plain page statement's rows, in
its order, page after page (continuation tokens included)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from typing import Any

import pytest

from iot_flows.hub._query import QueryService
from iot_flows.store import _sqlite_query, _sqlite_scan, open_store

COUNT = 3000
_COLUMNS = ("device_id", "generation_id", "device_etag", "status_updated_time", "connection_state_updated_time",
            "last_activity_time", "tags", "reported", "twin_etag")  # fmt: skip
QUERIES = {
    # 1 match in 1,000 (rare): the walk gives up, the prefix walk and the scan finish the page
    "rare": "SELECT * FROM devices WHERE properties.reported.n = 7",
    # 1 in 3 (common): the plain walk fills a page long before its budget
    "common": "SELECT * FROM devices WHERE properties.reported.k = 1",
    # 1 in 40: pages fill within the prefix walk
    "some": "SELECT * FROM devices WHERE properties.reported.m = 0 AND tags.t = 'x'",
    "none": "SELECT * FROM devices WHERE properties.reported.n = -1",
}


def _seed(path: str) -> None:
    asyncio.run(_create(path))
    order = list(range(COUNT))
    random.Random(13).shuffle(order)  # rowid order is not device id order
    rows = [
        (f"d-{i:05d}", "g", "e", "t", "t", "t", json.dumps({"t": "x" if i % 40 < 20 else "y"}),
         json.dumps({"n": i % 1000, "k": i % 3, "m": i % 20}), "AAAAAAAAAAE=")  # fmt: skip
        for i in order
    ]
    conn = sqlite3.connect(path)
    conn.executemany(f"INSERT INTO devices ({', '.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})", rows)
    conn.commit()
    conn.close()


async def _create(path: str) -> None:
    store = await open_store(path)
    await store.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("adaptive") / "hub.db")
    _seed(path)
    return path


@pytest.fixture
def small_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds scaled to the 3,000-twin table (as for a table of ~1M)."""
    monkeypatch.setattr(_sqlite_scan, "ADAPTIVE_ROWS", 1000)
    monkeypatch.setattr(_sqlite_scan, "WALK_STEPS", 8000)
    monkeypatch.setattr(_sqlite_scan, "MIN_PREFIX", 200)
    monkeypatch.setattr(_sqlite_scan, "PROGRESS_EVERY", 100)


def _plain_pages(path: str, store: Any, text: str, size: int) -> list[list[tuple[str, str]]]:
    """Every page as the plain statement gives it, run directly with sqlite3."""
    compiled = store.compile_query(text)
    conn = sqlite3.connect(path)
    pages, after = [], ""
    while True:
        sql, args = store.page_statement(compiled, after=after, limit=size)
        page = [(r[0], r[1]) for r in conn.execute(sql, args)]
        if page:
            pages.append(page)
        if len(page) < size:
            return pages
        after = page[-1][0]


async def _hub_pages(path: str, text: str, size: int) -> tuple[list[list[str]], list[list[list[tuple[str, str]]]]]:
    store = await open_store(path)
    try:
        service, pages, token = QueryService(store), [], None
        while True:
            result = await service.run(text, page_size=size, continuation=token)
            if result.items:
                pages.append(result.items)
            token = result.continuation
            if token is None:
                break
        # the store call itself, page by page, for the plain-statement comparison
        plain = _plain_pages(path, store, text, size)
        return pages, [plain]
    finally:
        await store.close()


@pytest.mark.parametrize("name", sorted(QUERIES))
@pytest.mark.parametrize("size", [5, 100])
def test_adaptive_pages_equal_the_plain_statement(db: str, small_budgets: None, name: str, size: int) -> None:
    pages, (plain,) = asyncio.run(_hub_pages(db, QUERIES[name], size))
    expected = [[text for _, text in page] for page in plain]
    assert pages == expected
    ids = [json.loads(item)["deviceId"] for page in pages for item in page]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    counts = {"rare": 3, "common": 1000, "some": 75, "none": 0}
    assert len(ids) == counts[name]


def test_rare_matches_take_the_adaptive_plan(db: str, small_budgets: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rare filter's walk is given up (the prefix end is looked up), the common one's is not."""
    ends: list[str] = []
    real = _sqlite_scan.prefix_end

    def spy(conn: sqlite3.Connection, after: str, table: int) -> str | None:
        end = real(conn, after, table)
        ends.append(str(end))
        return end

    monkeypatch.setattr(_sqlite_scan, "prefix_end", spy)
    asyncio.run(_hub_pages(db, QUERIES["common"], 100))
    assert ends == []
    asyncio.run(_hub_pages(db, QUERIES["rare"], 100))
    assert ends


def test_pages_over_the_inline_budget_run_in_a_worker_thread(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zero budget interrupts every page on the loop: each runs again in a thread, same rows."""
    monkeypatch.setattr(_sqlite_query, "INLINE_BUDGET", 0.0)
    for text in (QUERIES["common"], QUERIES["rare"], "SELECT properties.reported.k, COUNT() FROM devices GROUP BY properties.reported.k"):
        pages, (plain,) = asyncio.run(_hub_pages(db, text, 100))
        if text.startswith("SELECT *"):
            assert pages == [[t for _, t in page] for page in plain]
        else:
            assert [json.loads(i) for i in pages[0]] and len(pages[0]) == 3
