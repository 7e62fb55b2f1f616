"""SQLite twin pages whose filter no index serves: a primary-key walk, then a scan and sort.

SQLite answers ``SELECT ... WHERE <filter> AND device_id > ? ORDER BY device_id LIMIT n``
by walking the primary key and fetching each row: quick when matches are common (it
stops after ``n``), but when they are rare it visits the whole table in key order, a
random read per row, about twice the cost of scanning the table and sorting the few
matches. :func:`twin_page` gets the same rows in the same order by the cheaper plan:

1. the plain statement, interrupted after :data:`WALK_STEPS` SQLite VM instructions
   (a page of common matches is done by then);
2. if interrupted, the primary-key walk over a prefix of the table (:func:`prefix_end`:
   a tenth, at least :data:`MIN_PREFIX` rows);
3. if the page is still not full, a scan of the rest of the table (``NOT INDEXED``)
   sorting what matches.

Every statement runs in the caller's read transaction (one snapshot), so the pieces
join into exactly the rows the plain statement returns.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

__all__ = ["MIN_PREFIX", "WALK_STEPS", "prefix_end", "twin_page", "walks_primary_key"]

#: SQLite VM instructions the plain statement may run before the adaptive plan takes over
#: (a first page over 100,000 twins with 5 % matches runs ~13,000; a full walk ~6 per row).
WALK_STEPS = 200_000
#: The bounded primary-key walk covers at least this many rows.
MIN_PREFIX = 20_000
_EVERY = 500
#: Plans (``EXPLAIN QUERY PLAN`` of the plain page statement) by statement text.
_PLANS: dict[str, bool] = {}
_PK_WALK = "SEARCH devices USING INDEX sqlite_autoindex_devices_1 (device_id>?)"


def walks_primary_key(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> bool:
    """Whether SQLite runs the plain page statement ``sql`` as a primary-key walk with no
    other index (the filter is checked row by row); remembered per statement text."""
    known = _PLANS.get(sql)
    if known is None:
        details = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
        known = details == [_PK_WALK]
        if len(_PLANS) >= 512:
            _PLANS.clear()
        _PLANS[sql] = known
    return known


def prefix_end(conn: sqlite3.Connection, after: str) -> str | None:
    """The last device id of the walked prefix after ``after`` (None: the table ends first):
    a tenth of the table (estimated by its largest rowid), at least :data:`MIN_PREFIX` rows."""
    largest = conn.execute("SELECT max(rowid) FROM devices").fetchone()[0] or 0
    rows = max(MIN_PREFIX, int(largest) // 10)
    row = conn.execute(
        "SELECT device_id FROM devices WHERE device_id > ? ORDER BY device_id LIMIT 1 OFFSET ?", (after, rows - 1)
    ).fetchone()
    return None if row is None else str(row[0])


def _walk(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...], deadline: float | None) -> list[Any] | None:
    """The plain statement's rows, or None once it has run :data:`WALK_STEPS` instructions.

    ``deadline`` (``time.perf_counter()``) still interrupts it (``sqlite3.OperationalError``)."""
    steps = [0]

    def progress() -> bool:
        steps[0] += _EVERY
        return steps[0] > WALK_STEPS or (deadline is not None and time.perf_counter() > deadline)

    conn.set_progress_handler(progress, _EVERY)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc) and steps[0] > WALK_STEPS:
            return None
        raise
    finally:
        if deadline is None:
            conn.set_progress_handler(None, 0)
        else:
            conn.set_progress_handler(lambda: time.perf_counter() > deadline, _EVERY)


def twin_page(
    conn: sqlite3.Connection,
    sql: str,
    args: tuple[Any, ...],
    columns: str,
    where_sql: str,
    params: tuple[Any, ...],
    deadline: float | None = None,
) -> list[Any]:
    """The rows of the plain page statement ``sql`` (``args`` = ``(*params, after, limit)``,
    selecting ``columns`` where ``where_sql``), in the same order, by the cheaper plan.

    ``deadline`` is the caller's time budget (see ``_sqlite_query``), kept in force."""
    if not walks_primary_key(conn, sql, args):
        return conn.execute(sql, args).fetchall()
    rows = _walk(conn, sql, args, deadline)
    if rows is not None:
        return rows
    after, limit = str(args[-2]), int(args[-1])
    end = prefix_end(conn, after)
    if end is None:  # the prefix is the rest of the table: the plain walk is the plan
        return conn.execute(sql, args).fetchall()
    rows = conn.execute(
        f"SELECT {columns} FROM devices WHERE ({where_sql}) AND device_id > ? AND device_id <= ?"
        " ORDER BY device_id LIMIT ?",
        (*params, after, end, limit),
    ).fetchall()
    if len(rows) >= limit:
        return rows
    rest = conn.execute(
        f"SELECT {columns} FROM devices NOT INDEXED WHERE device_id > ? AND ({where_sql}) ORDER BY device_id LIMIT ?",
        (end, *params, limit - len(rows)),
    ).fetchall()
    return rows + rest
