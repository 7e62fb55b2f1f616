"""``POST /devices/query``: run compiled IoT Hub queries against the store, with paging.

The store runs each page (SQLite: a read-only connection in a worker thread, so a scan
over many twins never stalls the device endpoint; PostgreSQL: a pooled connection). A
page's read starts after the request arrives, so results include every write
acknowledged before it (read-your-writes; Azure lags).
Paging: ``SELECT *`` results are keyset-paged by id (stable while devices change);
projections and aggregates are paged by offset. The continuation token is opaque.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from iot_flows._exceptions import BadRequestError
from iot_flows.query import CompiledQuery
from iot_flows.store import HubStore

__all__ = ["MAX_PAGE_SIZE", "QueryResult", "QueryService"]

#: Items encoded as Starlette's JSONResponse does (compact, UTF-8 kept, NaN refused).
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
DEFAULT_PAGE_SIZE = 100
#: Azure caps pages at 100; the bundled hub accepts larger pages (an extension).
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One page of a query: each item as JSON text, ``x-ms-item-type`` and the continuation
    token (None on the last page). Twin items come from the store as text, never parsed."""
    items: list[str]
    item_type: str
    continuation: str | None

    def body(self) -> bytes:
        """The response body: a JSON array of the items (UTF-8)."""
        return ("[" + ",".join(self.items) + "]").encode()


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


class QueryService:
    """Compiles and runs queries; safe to call from the event loop."""

    def __init__(self, store: HubStore) -> None:
        self._store = store

    async def run(self, text: Any, *, page_size: int | None, continuation: str | None) -> QueryResult:
        """``POST /devices/query`` (Azure "Query - Get Twins"): run ``text``, one page of ``page_size`` items.

        Raises ``BadRequestError`` for a non-string body, ``QuerySyntaxError`` (400) for bad syntax.
        """
        if not isinstance(text, str):
            raise BadRequestError("The body must be {\"query\": \"SELECT ...\"}.")
        compiled = self._store.compile_query(text)
        size = min(max(page_size or DEFAULT_PAGE_SIZE, 1), MAX_PAGE_SIZE)
        state = _decode_token(continuation)
        return await self._page(compiled, size, state)

    async def _page(self, compiled: CompiledQuery, size: int, state: dict[str, Any]) -> QueryResult:
        served = int(state.get("n", 0))
        limit = size if compiled.top is None else max(min(size, compiled.top - served), 0)
        if limit == 0:
            return QueryResult([], compiled.item_type, None)
        next_state: dict[str, Any]
        if compiled.item_type == "twin":
            twins = await self._store.query_twins(compiled, after=str(state.get("k", "")), limit=limit + 1)
            more = len(twins) > limit
            twins = twins[:limit]
            items = [text for _, text in twins]
            next_state = {"k": twins[-1][0]} if twins else {}
        elif compiled.item_type == "deviceJob":
            key = state.get("k") or ["", ""]
            jobs = await self._store.query_device_jobs(compiled, after=(str(key[0]), str(key[1])), limit=limit + 1)
            more = len(jobs) > limit
            jobs = jobs[:limit]
            items = [_encode(item) for item in jobs]
            next_state = {"k": [jobs[-1]["jobId"], jobs[-1]["deviceId"]]} if jobs else {}
        else:
            offset = int(state.get("o", 0))
            rows = await self._store.query_raw(compiled, offset=offset, limit=limit + 1)
            more = len(rows) > limit
            items = [_encode(item) for item in rows[:limit]]
            next_state = {"o": offset + len(items)}
        served += len(items)
        if compiled.top is not None and served >= compiled.top:
            more = False
        token = _encode_token({**next_state, "n": served}) if more else None
        return QueryResult(items, compiled.item_type, token)
