"""PostgreSQL implementation of :class:`~iot_flows.store.HubStore` (asyncpg, ``jsonb``).

Every write is one statement or one :meth:`PostgresStore.transaction`, committed with
``synchronous_commit=on`` before the method returns: the hub acknowledges only
durable writes. Reads run on pooled connections after the request arrived, so they
see every acknowledged write (read-your-writes). A lost or unreachable server is a
:class:`~iot_flows._exceptions.ServiceUnavailableError` (503, retryable); the pool
reconnects by itself once the server is back. Connection plumbing is in :mod:`._pg_pool`,
the job tables in :mod:`._pg_jobs`, connection states and stored sessions in :mod:`._pg_sessions`.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from decimal import Decimal
from typing import Any

import asyncpg

from iot_flows._exceptions import DeviceAlreadyExistsError, ServiceUnavailableError
from iot_flows.query import POSTGRES, CompiledQuery, compile_query, row_to_item
from iot_flows.store._batch import GroupCommit
from iot_flows.store._pg_jobs import PostgresJobs
from iot_flows.store._pg_pool import _LOST, _one_line, _rowcount, describe
from iot_flows.store._pg_query import TWIN_DOC
from iot_flows.store._pg_sessions import PostgresSessions
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
    loads_column,
)

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM devices"
_JOB_SELECT = ", ".join(f"{c}::text" if c in ("outcome", "error") else c for c in JOB_COLUMNS)



def _twin_batch(columns: tuple[str, ...]) -> str:
    """One statement that writes a batch of compare-and-set twin updates of ``columns``
    (group commit); the device ids it returns are the writes that happened."""
    return (
        "UPDATE devices AS d SET "
        + ", ".join(f"{c} = u.{c}::jsonb" if c in JSON_COLUMNS else f"{c} = u.{c}" for c in columns)
        + " FROM unnest($1::text[], $2::bigint[], "
        + ", ".join(f"${i}::text[]" if c in JSON_COLUMNS or c == "twin_etag" else f"${i}::bigint[]"
                    for i, c in enumerate(columns, start=3))
        + f") AS u(device_id, expected, {', '.join(columns)})"
        " WHERE d.device_id = u.device_id AND d.twin_version = u.expected RETURNING d.device_id"
    )  # fmt: skip


_VERSION_COLUMNS = tuple(c for c in TWIN_COLUMNS if c.endswith("version") or c == "twin_etag")
#: The batch statement per ``update_twin(sections=...)``: a reported PATCH writes (and
#: PostgreSQL parses) only the reported columns; anything else all twin columns.
_TWIN_BATCHES: dict[tuple[str, ...] | None, tuple[tuple[str, ...], str]] = {
    None: (TWIN_COLUMNS, _twin_batch(TWIN_COLUMNS)),
    ("reported",): (("reported", "reported_meta", *_VERSION_COLUMNS), _twin_batch(("reported", "reported_meta", *_VERSION_COLUMNS))),
}  # fmt: skip
#: One queued compare-and-set: (record, expected twin version, sections changed or None).
_TwinWrite = tuple[DeviceRecord, int, tuple[str, ...] | None]
#: Errors after which a batch is retried one item at a time (one item refused, or a
#: deadlock / serialization conflict with another node's batch).
_RETRY_SINGLY = (asyncpg.PostgresError,)
#: How long each write of a batch that hit a lock timeout waits for its row, alone.
_SINGLE_LOCK_TIMEOUT = "250ms"


def _placeholders(columns: Iterable[str], start: int = 1) -> builtins.list[str]:
    return [f"${i}::jsonb" if c in JSON_COLUMNS else f"${i}" for i, c in enumerate(columns, start)]


def _to_row(record: DeviceRecord, columns: Iterable[str]) -> builtins.list[Any]:
    return [dumps(getattr(record, c)) if c in JSON_COLUMNS else getattr(record, c) for c in columns]


def _from_row(row: Any) -> DeviceRecord:
    values = dict(zip(COLUMNS, tuple(row), strict=True))
    for column in JSON_COLUMNS:
        values[column] = loads_column(values[column])
    return DeviceRecord(**values)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):  # SUM/AVG over integer columns
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class PostgresStore(PostgresJobs, PostgresSessions):
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
        self.twin_writes: GroupCommit[_TwinWrite, bool] = GroupCommit(
            self._write_twins, max_inflight=inflight
        )
        self.twin_reads: GroupCommit[str, DeviceRecord | None] = GroupCommit(self._read_twins, max_inflight=inflight)
        # Connection states and stored sessions (every CONNECT, SUBSCRIBE, disconnect): an
        # eighth of the pool each, so that a fleet reconnecting at once never starves the rest.
        self._init_session_batches(max(1, pool_size // 8))

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

    # ---- meta -----------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        row = await self._fetchrow("SELECT value FROM meta WHERE key = $1", key)
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key, value,
        )  # fmt: skip

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        await self._execute("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, value)
        stored = await self.get_meta(key)
        assert stored is not None
        return stored

    # ---- group commit -------------------------------------------------------------
    async def _read_twins(self, device_ids: builtins.list[str]) -> builtins.list[DeviceRecord | None | BaseException]:
        rows = await self._fetch(f"{_SELECT} WHERE device_id = ANY($1::text[])", device_ids)
        found = {r[0]: r for r in rows}
        return [_from_row(found[d]) if d in found else None for d in device_ids]

    async def _write_twins(self, items: builtins.list[_TwinWrite]) -> builtins.list[bool | BaseException]:
        """One transaction of compare-and-set twin updates; True per item that was written.

        Answers only after COMMIT returned. A lost connection (or a failed COMMIT on a
        lost server) fails the whole batch; any other refusal re-runs each item alone, so
        only the item at fault fails.
        """
        groups: dict[tuple[str, ...] | None, builtins.list[_TwinWrite]] = {}
        for item in items:
            groups.setdefault(item[2] if item[2] in _TWIN_BATCHES else None, []).append(item)
        statements = []
        for key, group in groups.items():
            names, sql = _TWIN_BATCHES[key]
            ordered = sorted(group, key=lambda item: item[0].device_id)  # one lock order across nodes
            columns: builtins.list[builtins.list[Any]] = [[r.device_id for r, _, _ in ordered], [v for _, v, _ in ordered]]
            for c in names:
                columns.append([dumps(getattr(r, c)) if c in JSON_COLUMNS else getattr(r, c) for r, _, _ in ordered])
            statements.append((sql, columns))
        try:
            async with self._conn() as conn, conn.transaction():
                rows = []
                for sql, columns in statements:
                    rows.extend(await conn.fetch(sql, *columns))
        except ServiceUnavailableError:
            raise
        except _LOST as exc:
            raise self._lost(exc) from None
        except (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError):
            # a row lock held elsewhere past lock_timeout: find the locked twin(s) one at a
            # time, waiting briefly for each, so only they answer 503 (retryable)
            return await self._write_twins_singly(items, lock_timeout=_SINGLE_LOCK_TIMEOUT)
        except _RETRY_SINGLY:
            if len(items) == 1:
                raise
            log.info("a batch of %d twin writes was refused; writing them one at a time", len(items), exc_info=True)
            return await self._write_twins_singly(items)
        written = {r[0] for r in rows}
        return [record.device_id in written for record, _, _ in items]

    async def _write_twins_singly(
        self, items: builtins.list[_TwinWrite], *, lock_timeout: str | None = None
    ) -> builtins.list[bool | BaseException]:
        """Each write alone (its own commit); per item its result or its own exception."""
        out: builtins.list[bool | BaseException] = []
        for record, expected, _ in items:
            try:
                if lock_timeout is None:
                    out.append(await self._cas_twin(record, expected))
                    continue
                async with self.transaction():
                    await self._execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
                    out.append(await self._cas_twin(record, expected))
            except (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError) as exc:
                out.append(self._lost(exc))
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

    async def update_twin(
        self, record: DeviceRecord, *, expected_version: int | None = None, sections: tuple[str, ...] | None = None
    ) -> bool:
        if expected_version is None:
            await self._update(record, TWIN_COLUMNS)
            return True
        if not self._in_transaction():
            return await self.twin_writes.submit(record.device_id, (record, expected_version, sections))
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

    async def set_model_id(self, device_id: str, model_id: str) -> None:
        await self._execute("UPDATE devices SET model_id = $2 WHERE device_id = $1", device_id, model_id)

    async def reset_connection_states(self, when: str) -> None:
        await self._execute(
            "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = $1"
            " WHERE connection_state <> 'Disconnected'",
            when,
        )

    # ---- queries --------------------------------------------------------------------
    def compile_query(self, text: str) -> CompiledQuery:
        return compile_query(text, POSTGRES)

    def page_statement(
        self, compiled: CompiledQuery, *, after: str = "", offset: int = 0, limit: int
    ) -> tuple[str, tuple[Any, ...]]:
        n = len(compiled.params)
        if compiled.item_type == "twin":
            sql = (
                f"SELECT device_id, {TWIN_DOC} FROM devices WHERE ({compiled.where_sql}) AND device_id > ${n + 1}"
                f" ORDER BY device_id LIMIT ${n + 2}"
            )
            return sql, (*compiled.params, after, limit)
        return f"{compiled.sql} LIMIT ${n + 1} OFFSET ${n + 2}", (*compiled.params, limit, offset)

    async def query_twins(self, compiled: CompiledQuery, *, after: str, limit: int) -> builtins.list[tuple[str, str]]:
        sql, args = self.page_statement(compiled, after=after, limit=limit)
        rows = await self._fetch(sql, *args)
        return [(r[0], r[1]) for r in rows]

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
        sql, args = self.page_statement(compiled, offset=offset, limit=limit)
        rows = await self._fetch(sql, *args)
        return [row_to_item(compiled, [_plain(v) for v in r]) for r in rows]
