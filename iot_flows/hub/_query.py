"""``POST /devices/query``: run compiled IoT Hub queries against the store, with paging.

Queries run on a read-only connection in a worker thread, so a scan over many twins
never stalls the device endpoint. A read transaction starts after the request arrives,
so results include every write acknowledged before it (read-your-writes; Azure lags).
Paging: ``SELECT *`` results are keyset-paged by id (stable while devices change);
projections and aggregates are paged by offset. The continuation token is opaque.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

from iot_flows._exceptions import BadRequestError
from iot_flows.query import CompiledQuery, compile_query, row_to_item
from iot_flows.store._sqlite import SqliteStore

__all__ = ["MAX_PAGE_SIZE", "QueryResult", "QueryService"]

DEFAULT_PAGE_SIZE = 100
#: Azure caps pages at 100; the bundled hub accepts larger pages (an extension).
MAX_PAGE_SIZE = 1000
_JOB_COLUMNS = (
    "job_id", "device_id", "job_type", "status", "start_time_utc", "end_time_utc",
    "created_date_time_utc", "last_updated_date_time_utc", "outcome", "error",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueryResult:
    items: list[dict[str, Any]]
    item_type: str
    continuation: str | None


def _encode_token(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def _decode_token(token: str | None) -> dict[str, Any]:
    if not token:
        return {}
    try:
        state = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise BadRequestError("Invalid x-ms-continuation token.") from None
    if not isinstance(state, dict):
        raise BadRequestError("Invalid x-ms-continuation token.")
    return state


def device_job_item(row: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip(_JOB_COLUMNS, row, strict=True))
    item: dict[str, Any] = {
        "deviceId": values["device_id"],
        "jobId": values["job_id"],
        "jobType": values["job_type"],
        "status": values["status"],
        "startTimeUtc": values["start_time_utc"],
        "endTimeUtc": values["end_time_utc"],
        "createdDateTimeUtc": values["created_date_time_utc"],
        "lastUpdatedDateTimeUtc": values["last_updated_date_time_utc"],
        "outcome": json.loads(values["outcome"]) if values["outcome"] else None,
    }
    if values["error"]:
        item["error"] = json.loads(values["error"])
    return item


class QueryService:
    """Compiles and runs queries; safe to call from the event loop."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def run(self, text: Any, *, page_size: int | None, continuation: str | None) -> QueryResult:
        if not isinstance(text, str):
            raise BadRequestError("The body must be {\"query\": \"SELECT ...\"}.")
        compiled = compile_query(text)
        size = min(max(page_size or DEFAULT_PAGE_SIZE, 1), MAX_PAGE_SIZE)
        state = _decode_token(continuation)
        return await asyncio.to_thread(self._run_sync, compiled, size, state)

    def _run_sync(self, compiled: CompiledQuery, size: int, state: dict[str, Any]) -> QueryResult:
        conn = self._store.reader()
        served = int(state.get("n", 0))
        limit = size if compiled.top is None else max(min(size, compiled.top - served), 0)
        if limit == 0:
            return QueryResult([], compiled.item_type, None)
        conn.execute("BEGIN")
        try:
            if compiled.item_type == "twin":
                records = SqliteStore.select_records(
                    conn, compiled.where_sql, compiled.params, after=str(state.get("k", "")), limit=limit + 1
                )
                more = len(records) > limit
                records = records[:limit]
                items = [r.twin_json() for r in records]
                next_state = {"k": records[-1].device_id} if records else {}
            elif compiled.item_type == "deviceJob":
                key = state.get("k") or ["", ""]
                rows = conn.execute(
                    f"SELECT {', '.join(_JOB_COLUMNS)} FROM device_jobs WHERE ({compiled.where_sql})"
                    " AND (job_id, device_id) > (?, ?) ORDER BY job_id, device_id LIMIT ?",
                    (*compiled.params, key[0], key[1], limit + 1),
                ).fetchall()
                more = len(rows) > limit
                rows = rows[:limit]
                items = [device_job_item(r) for r in rows]
                next_state = {"k": [rows[-1][0], rows[-1][1]]} if rows else {}
            else:
                offset = int(state.get("o", 0))
                rows = conn.execute(f"{compiled.sql} LIMIT ? OFFSET ?", (*compiled.params, limit + 1, offset)).fetchall()
                more = len(rows) > limit
                rows = rows[:limit]
                items = [row_to_item(compiled, r) for r in rows]
                next_state = {"o": offset + len(rows)}
        finally:
            conn.execute("COMMIT")
        served += len(items)
        if compiled.top is not None and served >= compiled.top:
            more = False
        token = _encode_token({**next_state, "n": served}) if more else None
        return QueryResult(items, compiled.item_type, token)
