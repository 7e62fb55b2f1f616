"""SQLite twin pages whose filter no index serves: a primary-key walk, then a scan and sort.

SQLite answers ``SELECT ... WHERE <filter> AND device_id > ? ORDER BY device_id LIMIT n``
by walking the primary key and fetching each row: quick when matches are common (it
stops after ``n``), but when they are rare it visits the whole table in key order, a
random read per row, about twice the cost of scanning the table and sorting the few
matches (1M twins: 1.5 s instead of 2.3; at 100,000 twins, cached, the two cost about
the same, so tables under :data:`ADAPTIVE_ROWS` keep the plain walk). :func:`twin_page`
gets the same rows in the same order by the cheaper plan:

1. the plain statement, interrupted after :func:`walk_steps` SQLite VM instructions
   (~5 % of the table; a page of common matches is done by then);
2. if interrupted, the primary-key walk over a prefix of the table (:func:`prefix_end`:
   a twentieth, at least :data:`MIN_PREFIX` rows);
3. if the page is still not full, a scan of the rest of the table (``NOT INDEXED``)
   sorting what matches.

Every statement runs in the caller's read transaction (one snapshot), so the pieces
join into exactly the rows the plain statement returns.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

__all__ = [
    "ADAPTIVE_ROWS", "MIN_PREFIX", "PROGRESS_EVERY", "WALK_STEPS", "prefix_end", "table_rows", "twin_page", "walk_steps", "walks_primary_key",
]

#: Tables estimated smaller than this keep the plain walk.
ADAPTIVE_ROWS = 250_000
#: At least this many SQLite VM instructions for the plain statement before the adaptive
#: plan takes over (a first page of 100 twins with 5 % matches runs ~13,000; a walk ~5 per row).
WALK_STEPS = 50_000
#: The bounded primary-key walk covers at least this many rows.
MIN_PREFIX = 20_000
#: SQLite VM instructions between two calls of a progress handler (both plans' budgets).
PROGRESS_EVERY = 500
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


def table_rows(conn: sqlite3.Connection) -> int:
    """The ``devices`` table's size, estimated by its largest rowid (no scan)."""
    return int(conn.execute("SELECT max(rowid) FROM devices").fetchone()[0] or 0)


def walk_steps(rows: int) -> int:
    """SQLite VM instructions the plain walk may run on a table of ``rows``: ~5 % of it."""
    return max(WALK_STEPS, rows // 4)


def prefix_end(conn: sqlite3.Connection, after: str, table: int) -> str | None:
    """The last device id of the walked prefix after ``after`` (None: the table ends first):
    a twentieth of the ``table`` rows, at least :data:`MIN_PREFIX`."""
    rows = max(MIN_PREFIX, table // 20)
    row = conn.execute(
        "SELECT device_id FROM devices WHERE device_id > ? ORDER BY device_id LIMIT 1 OFFSET ?", (after, rows - 1)
    ).fetchone()
    return None if row is None else str(row[0])


def _walk(
    conn: sqlite3.Connection, sql: str, args: tuple[Any, ...], budget: int, inline: Callable[[], bool] | None
) -> list[Any] | None:
    """The plain statement's rows, or None once it has run ``budget`` instructions.

    ``inline`` (the caller's progress handler) still interrupts it (``sqlite3.OperationalError``)."""
    steps = [0]

    def progress() -> bool:
        steps[0] += PROGRESS_EVERY
        return steps[0] > budget or (inline is not None and inline())

    conn.set_progress_handler(progress, PROGRESS_EVERY)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc) and steps[0] > budget:
            return None
        raise
    finally:
        conn.set_progress_handler(inline, PROGRESS_EVERY if inline is not None else 0)


def twin_page(
    conn: sqlite3.Connection,
    sql: str,
    args: tuple[Any, ...],
    columns: str,
    where_sql: str,
    params: tuple[Any, ...],
    inline: Callable[[], bool] | None = None,
) -> list[Any]:
    """The rows of the plain page statement ``sql`` (``args`` = ``(*params, after, limit)``,
    selecting ``columns`` where ``where_sql``), in the same order, by the cheaper plan.

    ``inline`` is the caller's progress handler (its budget, see ``_sqlite_query``), kept in force."""
    if not walks_primary_key(conn, sql, args):
        return conn.execute(sql, args).fetchall()
    table = table_rows(conn)
    if table < ADAPTIVE_ROWS:
        return conn.execute(sql, args).fetchall()
    rows = _walk(conn, sql, args, walk_steps(table), inline)
    if rows is not None:
        return rows
    after, limit = str(args[-2]), int(args[-1])
    end = prefix_end(conn, after, table)
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
