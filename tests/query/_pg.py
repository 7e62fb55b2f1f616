"""The query test helpers' PostgreSQL side: a real database with the store's schema.

Hypothesis tests are synchronous; asyncpg is not. :class:`PgQueryDb` runs one asyncpg
pool on an event loop in a background thread and offers the few synchronous calls
``_support`` needs. The schema comes from the store itself (``open_store``), so the
tests exercise the same tables, collations and functions as the hub.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from iot_flows.query import POSTGRES, CompiledQuery, compile_query
from iot_flows.store import HubStore, open_store

from ._support import job_row, results, select_sql, twin_row

_JSONB = {"capabilities", "tags", "desired", "reported"}


def _plain(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class PgQueryDb:
    """Synchronous access to one PostgreSQL database for the query tests."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-query-db", daemon=True)
        self._thread.start()
        self._store: HubStore = self._run(open_store(url))
        self._pool = self._store._pool  # type: ignore[attr-defined]

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def reset(self) -> "PgQueryDb":
        """Empty the devices and device_jobs tables."""
        self._run(self._pool.execute("TRUNCATE devices, device_jobs"))
        return self

    def insert_twin(self, twin: dict[str, Any]) -> None:
        row = twin_row(twin)
        marks = ", ".join(f"${i}::jsonb" if c in _JSONB else f"${i}" for i, c in enumerate(row, 1))
        self._run(self._pool.execute(f"INSERT INTO devices ({', '.join(row)}) VALUES ({marks})", *row.values()))

    def insert_job(self, job: dict[str, Any]) -> None:
        marks = ", ".join(f"${i}::jsonb" if i > 8 else f"${i}" for i in range(1, 11))
        self._run(self._pool.execute(f"INSERT INTO device_jobs VALUES ({marks})", *job_row(job)))

    def query(self, text: str) -> list[Any]:
        """Compile ``text`` for PostgreSQL and run it as ``_support.execute`` does for SQLite."""
        return self.execute(compile_query(text, POSTGRES))

    def execute(self, compiled: CompiledQuery) -> list[Any]:
        return results(compiled, self._run(self._pool.fetch(select_sql(compiled), *compiled.params)), _plain)

    def close(self) -> None:
        self._run(self._store.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
