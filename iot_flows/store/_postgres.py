"""PostgreSQL implementation of :class:`~iot_flows.store.HubStore` (asyncpg, ``jsonb``).

Every write is one statement or one :meth:`PostgresStore.transaction`, committed with
``synchronous_commit=on`` before the method returns: the hub acknowledges only
durable writes. Reads run on pooled connections after the request arrived, so they
see every acknowledged write (read-your-writes). A lost or unreachable server is a
:class:`~iot_flows._exceptions.ServiceUnavailableError` (503, retryable); the pool
reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from iot_flows._exceptions import DeviceAlreadyExistsError, JobAlreadyExistsError, ServiceUnavailableError
from iot_flows.query import POSTGRES, CompiledQuery, compile_condition, compile_query, row_to_item
from iot_flows.store._base import DeviceOutcome, HubStore
from iot_flows.store._batch import GroupCommit
from iot_flows.store._pgschema import PG_MIGRATIONS
from iot_flows.store._records import DeviceRecord
from iot_flows.store._rows import (
    COLUMNS,
    IDENTITY_COLUMNS,
    JOB_COLUMNS,
    JSON_COLUMNS,
    TWIN_COLUMNS,
    device_job_item,
    dumps,
)

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM devices"
_JOB_SELECT = ", ".join(f"{c}::text" if c in ("outcome", "error") else c for c in JOB_COLUMNS)
_ACTIVE = "('queued', 'scheduled', 'running')"
#: Errors that mean "the server is gone or refuses connections now", never "bad SQL".
_LOST = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # a pooled connection whose server process was terminated mid-call
)


#: One statement writes a batch of compare-and-set twin updates (group commit); the
#: device ids it returns are the writes that happened.
_TWIN_BATCH = (
    "UPDATE devices AS d SET "
    + ", ".join(f"{c} = u.{c}::jsonb" if c in JSON_COLUMNS else f"{c} = u.{c}" for c in TWIN_COLUMNS)
    + " FROM unnest($1::text[], $2::bigint[], "
    + ", ".join(f"${i}::text[]" if c in JSON_COLUMNS or c == "twin_etag" else f"${i}::bigint[]"
                for i, c in enumerate(TWIN_COLUMNS, start=3))
    + f") AS u(device_id, expected, {', '.join(TWIN_COLUMNS)})"
    " WHERE d.device_id = u.device_id AND d.twin_version = u.expected RETURNING d.device_id"
)  # fmt: skip
#: Errors after which a batch is retried one item at a time (one item refused, or a
#: deadlock / serialization conflict with another node's batch).
_RETRY_SINGLY = (asyncpg.PostgresError,)


def _placeholders(columns: Iterable[str], start: int = 1) -> builtins.list[str]:
    return [f"${i}::jsonb" if c in JSON_COLUMNS else f"${i}" for i, c in enumerate(columns, start)]


def _to_row(record: DeviceRecord, columns: Iterable[str]) -> builtins.list[Any]:
    return [dumps(getattr(record, c)) if c in JSON_COLUMNS else getattr(record, c) for c in columns]


def _from_row(row: Any) -> DeviceRecord:
    values = dict(zip(COLUMNS, tuple(row), strict=True))
    for column in JSON_COLUMNS:
        values[column] = json.loads(values[column])
    return DeviceRecord(**values)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):  # SUM/AVG over integer columns
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _rowcount(status: str) -> int:
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def describe(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


class PostgresStore(HubStore):
    """Registry, twins, meta values, sessions and jobs in one PostgreSQL database."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, location: str, *, pool_size: int = 20, acquire_timeout: float = 10.0) -> None:
        self._pool = pool
        self.location = location
        self.schema_version = 0
        self._acquire_timeout = acquire_timeout
        #: (connection, owning task) of the transaction in progress in this context
        self._tx: ContextVar[tuple[Any, Any] | None] = ContextVar(f"pg_tx_{id(self)}", default=None)
        # Group commit (see _batch): concurrent twin reads and compare-and-set writes share
        # round trips and commits; each kind takes at most a quarter of the pool.
        inflight = max(1, pool_size // 4)
        self.twin_writes: GroupCommit[tuple[DeviceRecord, int], bool] = GroupCommit(
            self._write_twins, max_inflight=inflight
        )
        self.twin_reads: GroupCommit[str, DeviceRecord | None] = GroupCommit(self._read_twins, max_inflight=inflight)

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 20, acquire_timeout: float = 10.0) -> PostgresStore:
        """Connect, migrate the schema and return the store.

        ``pool_size`` is the most connections this store opens; ``acquire_timeout``
        (seconds) how long a call waits for a free one before it answers 503.

        Raises StoreConfigError for a malformed URL, ServiceUnavailableError (one line
        naming the server) when PostgreSQL cannot be reached or refuses the login.
        """
        from iot_flows.store import StoreConfigError

        location = describe(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=acquire_timeout,
                # lock_timeout: a lock held elsewhere fails the statement (503, retryable) instead
                # of holding the request forever.
                server_settings={"synchronous_commit": "on", "application_name": "iot-flows-hub", "lock_timeout": "5s"},
            )
        except (ValueError, asyncpg.ClientConfigurationError) as exc:
            raise StoreConfigError(f"--db {url!r}: {_one_line(exc)}") from None
        except (*_LOST, asyncpg.PostgresError) as exc:
            raise ServiceUnavailableError(f"PostgreSQL at {location} is unreachable: {_one_line(exc)}") from None
        store = cls(pool, location, pool_size=pool_size, acquire_timeout=acquire_timeout)
        try:
            store.schema_version = await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> int:
        async with self._conn() as conn:
            collate = await conn.fetchval("SELECT datcollate FROM pg_database WHERE datname = current_database()")
            if collate not in ("C", "POSIX", "C.UTF-8", "C.utf8"):
                log.warning(
                    "database collation is %s: string ranges on twin properties follow it; "
                    "create the database with LC_COLLATE 'C' for IoT Hub's code-point order", collate
                )
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('iot-flows schema'))")
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
                for version, script in enumerate(PG_MIGRATIONS, start=1):
                    if version > current:
                        await conn.execute(script)
                        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
                        current = version
        return current

    # ---- plumbing -------------------------------------------------------------------
    def _lost(self, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(f"PostgreSQL at {self.location} is unavailable: {_one_line(exc)}")

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        """The transaction's connection when inside one (same task), else a pooled one."""
        tx = self._tx.get()
        if tx is not None and tx[1] is asyncio.current_task():
            yield tx[0]
            return
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                try:
                    yield conn
                except (*_LOST, ServiceUnavailableError):
                    with suppress(Exception):  # may be half-broken (server process gone): never reuse it
                        conn.terminate()
                    raise
        except _LOST as exc:
            raise self._lost(exc) from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        tx = self._tx.get()
        if tx is not None and tx[1] is asyncio.current_task():
            yield  # nested: joins the outer transaction
            return
        async with self._conn() as conn:
            try:
                async with conn.transaction():
                    token = self._tx.set((conn, asyncio.current_task()))
                    try:
                        yield
                    finally:
                        self._tx.reset(token)
            except _LOST as exc:
                raise self._lost(exc) from None

    async def _fetch(self, sql: str, *args: Any) -> builtins.list[Any]:
        async with self._conn() as conn:
            try:
                return list(await conn.fetch(sql, *args))
            except _LOST as exc:
                raise self._lost(exc) from None

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._conn() as conn:
            try:
                return await conn.fetchrow(sql, *args)
            except _LOST as exc:
                raise self._lost(exc) from None

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self._conn() as conn:
            try:
                return str(await conn.execute(sql, *args))
            except _LOST as exc:
                raise self._lost(exc) from None

    async def _executemany(self, sql: str, args: builtins.list[Any]) -> None:
        if not args:
            return
        async with self._conn() as conn:
            try:
                await conn.executemany(sql, args)
            except _LOST as exc:
                raise self._lost(exc) from None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), 5)
        except (TimeoutError, *_LOST):
            self._pool.terminate()

    # ---- meta -----------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        row = await self._fetchrow("SELECT value FROM meta WHERE key = $1", key)
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key, value,
        )  # fmt: skip

    # ---- group commit -------------------------------------------------------------
    def _in_transaction(self) -> bool:
        tx = self._tx.get()
        return tx is not None and tx[1] is asyncio.current_task()

    async def _read_twins(self, device_ids: builtins.list[str]) -> builtins.list[DeviceRecord | None | BaseException]:
        rows = await self._fetch(f"{_SELECT} WHERE device_id = ANY($1::text[])", device_ids)
        found = {r[0]: r for r in rows}
        return [_from_row(found[d]) if d in found else None for d in device_ids]

    async def _write_twins(self, items: builtins.list[tuple[DeviceRecord, int]]) -> builtins.list[bool | BaseException]:
        """One transaction of compare-and-set twin updates; True per item that was written.

        Answers only after COMMIT returned. A lost connection (or a failed COMMIT on a
        lost server) fails the whole batch; any other refusal re-runs each item alone, so
        only the item at fault fails.
        """
        ordered = sorted(items, key=lambda item: item[0].device_id)  # one lock order across nodes
        columns: builtins.list[builtins.list[Any]] = [[r.device_id for r, _ in ordered], [v for _, v in ordered]]
        for c in TWIN_COLUMNS:
            columns.append([dumps(getattr(r, c)) if c in JSON_COLUMNS else getattr(r, c) for r, _ in ordered])
        try:
            async with self._conn() as conn, conn.transaction():
                rows = await conn.fetch(_TWIN_BATCH, *columns)
        except ServiceUnavailableError:
            raise
        except _LOST as exc:
            raise self._lost(exc) from None
        except _RETRY_SINGLY:
            if len(items) == 1:
                raise
            log.info("a batch of %d twin writes was refused; writing them one at a time", len(items), exc_info=True)
            return await self._write_twins_singly(items)
        written = {r[0] for r in rows}
        return [record.device_id in written for record, _ in items]

    async def _write_twins_singly(
        self, items: builtins.list[tuple[DeviceRecord, int]]
    ) -> builtins.list[bool | BaseException]:
        out: builtins.list[bool | BaseException] = []
        for record, expected in items:
            try:
                out.append(await self._cas_twin(record, expected))
            except Exception as exc:
                out.append(exc)
        return out

    # ---- devices --------------------------------------------------------------------
    async def get(self, device_id: str) -> DeviceRecord | None:
        if not self._in_transaction():
            return await self.twin_reads.submit(device_id, device_id)
        row = await self._fetchrow(f"{_SELECT} WHERE device_id = $1", device_id)
        return _from_row(row) if row else None

    async def get_many(self, device_ids: builtins.list[str]) -> builtins.list[DeviceRecord]:
        rows = await self._fetch(f"{_SELECT} WHERE device_id = ANY($1::text[]) ORDER BY device_id", device_ids)
        return [_from_row(r) for r in rows]

    async def insert(self, record: DeviceRecord) -> None:
        status = await self._execute(
            f"INSERT INTO devices ({', '.join(COLUMNS)}) VALUES ({', '.join(_placeholders(COLUMNS))})"
            " ON CONFLICT (device_id) DO NOTHING",
            *_to_row(record, COLUMNS),
        )
        if _rowcount(status) == 0:
            raise DeviceAlreadyExistsError(f"A device with ID '{record.device_id}' is already registered.")

    async def _update(self, record: DeviceRecord, columns: tuple[str, ...]) -> None:
        sets = ", ".join(f"{c} = {p}" for c, p in zip(columns, _placeholders(columns, 2), strict=True))
        await self._execute(
            f"UPDATE devices SET {sets} WHERE device_id = $1", record.device_id, *_to_row(record, columns)
        )

    async def update_identity(self, record: DeviceRecord) -> None:
        await self._update(record, IDENTITY_COLUMNS)

    async def update_twin(self, record: DeviceRecord, *, expected_version: int | None = None) -> bool:
        if expected_version is None:
            await self._update(record, TWIN_COLUMNS)
            return True
        if not self._in_transaction():
            return await self.twin_writes.submit(record.device_id, (record, expected_version))
        return await self._cas_twin(record, expected_version)

    async def _cas_twin(self, record: DeviceRecord, expected_version: int) -> bool:
        values = _to_row(record, TWIN_COLUMNS)
        sets = ", ".join(f"{c} = {p}" for c, p in zip(TWIN_COLUMNS, _placeholders(TWIN_COLUMNS, 3), strict=True))
        status = await self._execute(
            f"UPDATE devices SET {sets} WHERE device_id = $1 AND twin_version = $2",
            record.device_id, expected_version, *values,
        )  # fmt: skip
        return _rowcount(status) > 0

    async def delete(self, device_id: str) -> bool:
        return _rowcount(await self._execute("DELETE FROM devices WHERE device_id = $1", device_id)) > 0

    async def list(self, *, after: str = "", limit: int = 1000) -> builtins.list[DeviceRecord]:
        rows = await self._fetch(f"{_SELECT} WHERE device_id > $1 ORDER BY device_id LIMIT $2", after, limit)
        return [_from_row(r) for r in rows]

    async def count(self) -> int:
        row = await self._fetchrow("SELECT COUNT(*) FROM devices")
        return int(row[0])

    async def set_connection_state(self, device_id: str, state: str, when: str) -> None:
        if state == "Connected":
            await self._execute(
                "UPDATE devices SET connection_state = $2, connection_state_updated_time = $3,"
                " last_activity_time = $3 WHERE device_id = $1",
                device_id, state, when,
            )  # fmt: skip
        else:
            await self._execute(
                "UPDATE devices SET connection_state = $2, connection_state_updated_time = $3 WHERE device_id = $1",
                device_id, state, when,
            )  # fmt: skip

    async def set_model_id(self, device_id: str, model_id: str) -> None:
        await self._execute("UPDATE devices SET model_id = $2 WHERE device_id = $1", device_id, model_id)

    async def reset_connection_states(self, when: str) -> None:
        await self._execute(
            "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = $1"
            " WHERE connection_state <> 'Disconnected'",
            when,
        )

    # ---- sessions -------------------------------------------------------------------
    async def get_subscriptions(self, device_id: str) -> builtins.list[str]:
        row = await self._fetchrow("SELECT mqtt_subscriptions FROM devices WHERE device_id = $1", device_id)
        return [s for s in row[0].split("\n") if s] if row else []

    async def set_subscriptions(self, device_id: str, filters: builtins.list[str]) -> None:
        await self._execute(
            "UPDATE devices SET mqtt_subscriptions = $2 WHERE device_id = $1", device_id, "\n".join(sorted(filters))
        )

    # ---- queries --------------------------------------------------------------------
    def compile_query(self, text: str) -> CompiledQuery:
        return compile_query(text, POSTGRES)

    async def query_twins(self, compiled: CompiledQuery, *, after: str, limit: int) -> builtins.list[DeviceRecord]:
        n = len(compiled.params)
        rows = await self._fetch(
            f"{_SELECT} WHERE ({compiled.where_sql}) AND device_id > ${n + 1} ORDER BY device_id LIMIT ${n + 2}",
            *compiled.params, after, limit,
        )  # fmt: skip
        return [_from_row(r) for r in rows]

    async def query_device_jobs(
        self, compiled: CompiledQuery, *, after: tuple[str, str], limit: int
    ) -> builtins.list[dict[str, Any]]:
        n = len(compiled.params)
        rows = await self._fetch(
            f"SELECT {_JOB_SELECT} FROM device_jobs WHERE ({compiled.where_sql})"
            f" AND (job_id, device_id) > (${n + 1}, ${n + 2}) ORDER BY job_id, device_id LIMIT ${n + 3}",
            *compiled.params, after[0], after[1], limit,
        )  # fmt: skip
        return [device_job_item(r) for r in rows]

    async def query_raw(self, compiled: CompiledQuery, *, offset: int, limit: int) -> builtins.list[dict[str, Any]]:
        n = len(compiled.params)
        rows = await self._fetch(
            f"{compiled.sql} LIMIT ${n + 1} OFFSET ${n + 2}", *compiled.params, limit, offset
        )
        return [row_to_item(compiled, [_plain(v) for v in r]) for r in rows]

    # ---- jobs -----------------------------------------------------------------------
    async def insert_job(self, job_id: str, job_type: str, status: str, created: str, doc: dict[str, Any]) -> None:
        result = await self._execute(
            "INSERT INTO jobs (job_id, type, status, created_time, doc) VALUES ($1, $2, $3, $4, $5::jsonb)"
            " ON CONFLICT (job_id) DO NOTHING",
            job_id, job_type, status, created, dumps(doc),
        )  # fmt: skip
        if _rowcount(result) == 0:
            raise JobAlreadyExistsError(f"A job with id '{job_id}' already exists.")

    async def save_job(self, doc: dict[str, Any]) -> None:
        await self._execute(
            "UPDATE jobs SET status = $2, doc = $3::jsonb WHERE job_id = $1", doc["jobId"], doc["status"], dumps(doc)
        )

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = await self._fetchrow("SELECT doc FROM jobs WHERE job_id = $1", job_id)
        return json.loads(row[0]) if row else None

    async def active_jobs(self) -> builtins.list[dict[str, Any]]:
        rows = await self._fetch(f"SELECT doc FROM jobs WHERE status IN {_ACTIVE} ORDER BY created_time, job_id")
        return [json.loads(r[0]) for r in rows]

    async def count_active_jobs(self) -> int:
        row = await self._fetchrow(f"SELECT COUNT(*) FROM jobs WHERE status IN {_ACTIVE}")
        return int(row[0])

    async def list_jobs(
        self, *, job_type: str | None, status: str | None, after: str, limit: int
    ) -> builtins.list[dict[str, Any]]:
        where, params = ["(created_time || '|' || job_id) > $1"], [after]
        if job_type:
            params.append(job_type)
            where.append(f"type = ${len(params)}")
        if status:
            params.append(status)
            where.append(f"status = ${len(params)}")
        params.append(limit)  # type: ignore[arg-type]
        rows = await self._fetch(
            f"SELECT doc FROM jobs WHERE {' AND '.join(where)} ORDER BY created_time, job_id LIMIT ${len(params)}",
            *params,
        )
        return [json.loads(r[0]) for r in rows]

    async def select_device_ids(self, condition: str) -> builtins.list[str]:
        where_sql, params = compile_condition(condition, POSTGRES)
        rows = await self._fetch(f"SELECT device_id FROM devices WHERE {where_sql} ORDER BY device_id", *params)
        return [r[0] for r in rows]

    async def add_device_jobs(
        self, job_id: str, job_type: str, device_ids: Iterable[str], status: str, now: str
    ) -> None:
        ids = list(device_ids)
        if ids:
            await self._execute(
                "INSERT INTO device_jobs (job_id, device_id, job_type, status, created_date_time_utc,"
                " last_updated_date_time_utc) SELECT $1, d, $2, $3, $4, $4 FROM unnest($5::text[]) AS d"
                " ON CONFLICT DO NOTHING",
                job_id, job_type, status, now, ids,
            )  # fmt: skip

    async def mark_device_jobs_running(self, job_id: str, device_ids: builtins.list[str], now: str) -> None:
        await self._execute(
            "UPDATE device_jobs SET status = 'running', start_time_utc = $2, last_updated_date_time_utc = $2"
            " WHERE job_id = $1 AND device_id = ANY($3::text[])",
            job_id, now, device_ids,
        )  # fmt: skip

    async def record_device_outcomes(self, job_id: str, outcomes: builtins.list[DeviceOutcome], now: str) -> None:
        await self._executemany(
            "UPDATE device_jobs SET status = $3, start_time_utc = COALESCE(start_time_utc, $4), end_time_utc = $5,"
            " outcome = $6::jsonb, error = $7::jsonb, last_updated_date_time_utc = $8"
            " WHERE job_id = $1 AND device_id = $2",
            [
                (
                    job_id,
                    device_id,
                    status,
                    start,
                    end,
                    dumps(outcome) if outcome is not None else None,
                    dumps(error) if error is not None else None,
                    now,
                )
                for device_id, status, start, end, outcome, error in outcomes
            ],
        )

    async def set_device_jobs_status_where(
        self, job_id: str, from_states: Iterable[str], to: str, now: str, error: Any = None
    ) -> int:
        result = await self._execute(
            "UPDATE device_jobs SET status = $2, end_time_utc = $3, last_updated_date_time_utc = $3, error = $4::jsonb"
            " WHERE job_id = $1 AND status = ANY($5::text[])",
            job_id, to, now, dumps(error) if error is not None else None, list(from_states),
        )  # fmt: skip
        return _rowcount(result)

    async def device_job_ids(self, job_id: str, status: str) -> builtins.list[str]:
        rows = await self._fetch(
            "SELECT device_id FROM device_jobs WHERE job_id = $1 AND status = $2 ORDER BY device_id", job_id, status
        )
        return [r[0] for r in rows]

    async def device_job_counts(self, job_id: str) -> dict[str, int]:
        rows = await self._fetch("SELECT status, COUNT(*) FROM device_jobs WHERE job_id = $1 GROUP BY status", job_id)
        return {r[0]: int(r[1]) for r in rows}
