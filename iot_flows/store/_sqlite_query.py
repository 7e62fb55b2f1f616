"""SQLite twin queries: compiled query pages on read-only connections, off the loop when long.

:class:`SqliteQueries` is mixed into :class:`~iot_flows.store._sqlite.SqliteStore`, which
provides ``_reader()`` (one read-only connection per thread). A page first runs on the
event loop's thread within a budget of SQLite VM instructions (:data:`INLINE_STEPS`,
counted by SQLite's progress handler; the same whatever else loads the machine) and of
time (:data:`INLINE_BUDGET`): a small page (an indexed filter, a GROUP BY over an index) saves the
two thread switches; a statement that overruns is interrupted and runs again in a worker
thread, as does every later page of the same statement text, so a scan over many twins
never stalls the event loop for longer than the budget. Twin pages leave SQLite as JSON
text: SQLite builds each ``Twin`` document itself (:data:`_TWIN_DOC`), nothing is parsed
or re-encoded in Python. A filter no index serves walks the primary key only for a prefix
of the table and finishes with a scan and sort (:mod:`._sqlite_scan`).
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from iot_flows.query import CompiledQuery, compile_query, row_to_item
from iot_flows.store._base import HubStore
from iot_flows.store._rows import JOB_COLUMNS, device_job_item
from iot_flows.store._sqlite_scan import PROGRESS_EVERY, twin_page

__all__ = ["INLINE_BUDGET", "SqliteQueries"]

#: SQLite VM instructions a query page may run on the event loop before it moves to a
#: worker thread (~5 ms on an idle core: a first page of 100 twins runs ~13,000).
INLINE_STEPS = 30_000
#: Seconds a query page may run on the event loop before it moves to a worker thread.
INLINE_BUDGET = 0.02
#: Seconds a statement text that overran :data:`INLINE_BUDGET` goes straight to a worker thread.
SLOW_FOR = 10.0
_SLOW_LIMIT = 512
_T = TypeVar("_T")
_Progress = Callable[[], bool]


def _section_json(section: str) -> str:
    return f"json_set({section}, '$.\"$metadata\"', json({section}_meta), '$.\"$version\"', {section}_version)"


#: ``DeviceRecord.twin_json()`` built by SQLite itself (same members, same order): a query
#: page's twins leave the database as JSON text, never parsed nor re-encoded in Python.
_TWIN_DOC = (
    "json_object('deviceId', device_id, 'etag', twin_etag, 'deviceEtag', device_etag, 'status', status,"
    " 'statusReason', status_reason, 'statusUpdateTime', status_updated_time, 'connectionState', connection_state,"
    " 'lastActivityTime', last_activity_time, 'cloudToDeviceMessageCount', c2d_message_count,"
    " 'authenticationType', auth_type, 'x509Thumbprint', json_object('primaryThumbprint', primary_thumbprint,"
    " 'secondaryThumbprint', secondary_thumbprint), 'modelId', model_id, 'version', twin_version,"
    f" 'tags', json(tags), 'properties', json_object('desired', {_section_json('desired')},"
    f" 'reported', {_section_json('reported')}), 'capabilities', json(capabilities))"
)


def _budget(deadline: float) -> Callable[[], bool]:
    """A progress handler interrupting after :data:`INLINE_STEPS` instructions or at ``deadline``."""
    calls = [INLINE_STEPS // PROGRESS_EVERY]

    def progress() -> bool:
        calls[0] -= 1
        return calls[0] < 0 or time.perf_counter() > deadline

    return progress


class SqliteQueries(HubStore):
    """The query methods of the SQLite store (see :class:`~iot_flows.store.HubStore`)."""

    def _reader(self) -> sqlite3.Connection:  # pragma: no cover - provided by SqliteStore
        raise NotImplementedError

    def compile_query(self, text: str) -> CompiledQuery:
        return compile_query(text)

    #: statement text -> ``time.monotonic()`` until which it runs in a worker thread
    _slow_statements: dict[str, float] | None = None

    def _in_read(self, work: Callable[[sqlite3.Connection, _Progress | None], _T], deadline: float | None = None) -> _T:
        """``work(conn, handler)`` in one read transaction on this thread's reader; with a
        ``deadline`` (``time.perf_counter()``), interrupted (``sqlite3.OperationalError``)
        by ``handler`` (installed, and passed on) past it or :data:`INLINE_STEPS`."""
        conn = self._reader()
        handler = None if deadline is None else _budget(deadline)
        if handler is not None:
            conn.set_progress_handler(handler, PROGRESS_EVERY)
        conn.execute("BEGIN")
        try:
            return work(conn, handler)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
            if handler is not None:
                conn.set_progress_handler(None, 0)

    async def _run(self, key: str, work: Callable[[sqlite3.Connection, _Progress | None], _T]) -> _T:
        """``work`` on the event loop within :data:`INLINE_BUDGET`, else in a worker thread.

        ``key`` (the statement text) remembers an overrun: its runs in the next
        :data:`SLOW_FOR` seconds go to the thread at once."""
        slow = self._slow_statements
        if slow is None:
            slow = self._slow_statements = {}
        if slow.get(key, 0.0) < time.monotonic():
            try:
                return self._in_read(work, time.perf_counter() + INLINE_BUDGET)
            except sqlite3.OperationalError as exc:
                if "interrupted" not in str(exc):
                    raise
                if len(slow) >= _SLOW_LIMIT:
                    slow.clear()
                slow[key] = time.monotonic() + SLOW_FOR
        return await asyncio.to_thread(self._in_read, work)

    async def _read_async(self, sql: str, params: Iterable[Any]) -> builtins.list[Any]:
        args = tuple(params)
        return await self._run(sql, lambda conn, _: conn.execute(sql, args).fetchall())

    def page_statement(
        self, compiled: CompiledQuery, *, after: str = "", offset: int = 0, limit: int
    ) -> tuple[str, tuple[Any, ...]]:
        if compiled.item_type == "twin":
            sql = (
                f"SELECT device_id, {_TWIN_DOC} FROM devices WHERE ({compiled.where_sql}) AND device_id > ?"
                " ORDER BY device_id LIMIT ?"
            )
            return sql, (*compiled.params, after, limit)
        return f"{compiled.sql} LIMIT ? OFFSET ?", (*compiled.params, limit, offset)

    async def query_twins(self, compiled: CompiledQuery, *, after: str, limit: int) -> builtins.list[tuple[str, str]]:
        sql, args = self.page_statement(compiled, after=after, limit=limit)
        doc = f"device_id, {_TWIN_DOC}"
        rows = await self._run(
            sql, lambda conn, handler: twin_page(conn, sql, args, doc, compiled.where_sql, compiled.params, handler)
        )
        return [(r[0], r[1]) for r in rows]

    async def query_device_jobs(
        self, compiled: CompiledQuery, *, after: tuple[str, str], limit: int
    ) -> builtins.list[dict[str, Any]]:
        rows = await self._read_async(
            f"SELECT {', '.join(JOB_COLUMNS)} FROM device_jobs WHERE ({compiled.where_sql})"
            " AND (job_id, device_id) > (?, ?) ORDER BY job_id, device_id LIMIT ?",
            (*compiled.params, after[0], after[1], limit),
        )
        return [device_job_item(r) for r in rows]

    async def query_raw(self, compiled: CompiledQuery, *, offset: int, limit: int) -> builtins.list[dict[str, Any]]:
        rows = await self._read_async(*self.page_statement(compiled, offset=offset, limit=limit))
        return [row_to_item(compiled, r) for r in rows]
