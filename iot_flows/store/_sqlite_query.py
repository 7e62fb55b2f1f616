"""SQLite twin queries: compiled query pages run on read-only connections in worker threads.

:class:`SqliteQueries` is mixed into :class:`~iot_flows.store._sqlite.SqliteStore`, which
provides ``_reader()`` (one read-only connection per worker thread), so a scan over many
twins never stalls the event loop. Twin pages leave SQLite as JSON text: SQLite builds
each ``Twin`` document itself (:data:`_TWIN_DOC`), nothing is parsed or re-encoded in Python.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
from collections.abc import Iterable
from typing import Any

from iot_flows.query import CompiledQuery, compile_query, row_to_item
from iot_flows.store._base import HubStore
from iot_flows.store._rows import JOB_COLUMNS, device_job_item

__all__ = ["SqliteQueries"]


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


class SqliteQueries(HubStore):
    """The query methods of the SQLite store (see :class:`~iot_flows.store.HubStore`)."""

    def _reader(self) -> sqlite3.Connection:  # pragma: no cover - provided by SqliteStore
        raise NotImplementedError

    def compile_query(self, text: str) -> CompiledQuery:
        return compile_query(text)

    def _read(self, sql: str, params: Iterable[Any]) -> builtins.list[Any]:
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return conn.execute(sql, tuple(params)).fetchall()
        finally:
            conn.execute("COMMIT")

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
        rows = await asyncio.to_thread(self._read, *self.page_statement(compiled, after=after, limit=limit))
        return [(r[0], r[1]) for r in rows]

    async def query_device_jobs(
        self, compiled: CompiledQuery, *, after: tuple[str, str], limit: int
    ) -> builtins.list[dict[str, Any]]:
        rows = await asyncio.to_thread(
            self._read,
            f"SELECT {', '.join(JOB_COLUMNS)} FROM device_jobs WHERE ({compiled.where_sql})"
            " AND (job_id, device_id) > (?, ?) ORDER BY job_id, device_id LIMIT ?",
            (*compiled.params, after[0], after[1], limit),
        )
        return [device_job_item(r) for r in rows]

    async def query_raw(self, compiled: CompiledQuery, *, offset: int, limit: int) -> builtins.list[dict[str, Any]]:
        rows = await asyncio.to_thread(self._read, *self.page_statement(compiled, offset=offset, limit=limit))
        return [row_to_item(compiled, r) for r in rows]
