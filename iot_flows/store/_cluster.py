"""What the nodes of a hub cluster share in the store: node leases, presence, job leases.

The one place the cluster (``iot_flows.hub.cluster``) touches the database, SQLite or
PostgreSQL, kept apart from :class:`~iot_flows.store.HubStore` because only hub nodes
started with ``--bus`` use it. Three tables:

==========================  ==================================================================
``cluster_nodes``           one row per node; ``expires_at`` (Unix seconds) is renewed by the
                            node's heartbeat; a node whose lease passed is dead.
``cluster_presence``        "which node holds device X": one row per connected device; a
                            claim counts only while its node's lease is alive.
``cluster_job_leases``      which node runs each job; free again once that node is dead.
==========================  ==================================================================

Times: SQLite (one machine) uses the process clock; PostgreSQL uses the database's
clock (``clock_timestamp()``), so nodes on several machines need no clock agreement.
Every method is one short transaction, committed on return.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any

from iot_flows.store._base import HubStore
from iot_flows.store._batch import GroupCommit

__all__ = ["ClusterStore", "open_cluster_store"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class ClusterStore(ABC):
    """Node leases, presence and job leases shared by every node of one hub."""

    def __init__(self, node_id: str, lease_seconds: float) -> None:
        self.node_id = node_id
        self.lease_seconds = lease_seconds

    @abstractmethod
    async def register(self) -> bool:
        """Write this node's lease; True when no *other* node is alive (the first node)."""

    @abstractmethod
    async def renew(self) -> None:
        """Extend this node's lease by ``lease_seconds`` (re-registering if it was removed)."""

    @abstractmethod
    async def leave(self) -> None:
        """Graceful stop: drop this node's claims, job leases and lease at once."""

    @abstractmethod
    async def claim(self, device_id: str) -> None:
        """This node now holds ``device_id`` (the newest connection wins)."""

    @abstractmethod
    async def release(self, device_id: str) -> bool:
        """Drop this node's claim; False when another node holds the device now."""

    @abstractmethod
    async def holder(self, device_id: str) -> str | None:
        """The live node holding ``device_id``, or None."""

    @abstractmethod
    async def holders(self, device_ids: list[str]) -> dict[str, str]:
        """``{device_id: live node holding it}`` for those of ``device_ids`` a live node holds (one query)."""

    @abstractmethod
    async def held_by_others(self, device_ids: list[str]) -> list[str]:
        """Those of ``device_ids`` that another live node claims."""

    @abstractmethod
    async def reset_own(self, *, everything: bool) -> None:
        """Node start: forget what an earlier run of this node held; the first node of a
        cluster marks every device disconnected (no connection survives a full restart)."""

    @abstractmethod
    async def expire_dead(self) -> int:
        """Release every claim of dead nodes (their devices become Disconnected)."""

    @abstractmethod
    async def acquire_job(self, job_id: str) -> bool:
        """Take the lease of ``job_id`` if it is free, ours, or held by a dead node."""

    @abstractmethod
    async def release_job(self, job_id: str) -> None:
        """Give up this node's lease of ``job_id``."""

    @abstractmethod
    async def job_holder(self, job_id: str) -> str | None:
        """The live node running ``job_id``, or None."""


# ---- SQLite ---------------------------------------------------------------------------
_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS cluster_nodes (node_id TEXT PRIMARY KEY, expires_at REAL NOT NULL, started_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cluster_presence (device_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, since REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ix_cluster_presence_node ON cluster_presence (node_id);
CREATE TABLE IF NOT EXISTS cluster_job_leases (job_id TEXT PRIMARY KEY, node_id TEXT NOT NULL);
"""
_ALIVE = "SELECT node_id FROM cluster_nodes WHERE expires_at > ?"


class SqliteClusterStore(ClusterStore):
    """On the SQLite store's writer connection (event-loop thread; WAL across processes)."""

    def __init__(self, conn: sqlite3.Connection, node_id: str, lease_seconds: float) -> None:
        super().__init__(node_id, lease_seconds)
        self._db = conn
        self._db.executescript(_SQLITE_DDL)

    def _release_devices_of(self, node_where: str, params: tuple[Any, ...], now: float) -> int:
        sub = f"SELECT device_id FROM cluster_presence WHERE {node_where}"
        self._db.execute(
            "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = ? "
            f"WHERE connection_state != 'Disconnected' AND device_id IN ({sub})",
            (_iso(now), *params),
        )
        return self._db.execute(f"DELETE FROM cluster_presence WHERE {node_where}", params).rowcount

    async def register(self) -> bool:
        now = time.time()
        others: int = self._db.execute(
            "SELECT COUNT(*) FROM cluster_nodes WHERE expires_at > ? AND node_id != ?", (now, self.node_id)
        ).fetchone()[0]
        self._db.execute(
            "INSERT INTO cluster_nodes (node_id, expires_at, started_at) VALUES (?, ?, ?) "
            "ON CONFLICT(node_id) DO UPDATE SET expires_at = excluded.expires_at, started_at = excluded.started_at",
            (self.node_id, now + self.lease_seconds, now),
        )
        return others == 0

    async def renew(self) -> None:
        cur = self._db.execute(
            "UPDATE cluster_nodes SET expires_at = ? WHERE node_id = ?", (time.time() + self.lease_seconds, self.node_id)
        )
        if cur.rowcount == 0:
            await self.register()

    async def leave(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._release_devices_of("node_id = ?", (self.node_id,), time.time())
            self._db.execute("DELETE FROM cluster_job_leases WHERE node_id = ?", (self.node_id,))
            self._db.execute("DELETE FROM cluster_nodes WHERE node_id = ?", (self.node_id,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def claim(self, device_id: str) -> None:
        self._db.execute(
            "INSERT INTO cluster_presence (device_id, node_id, since) VALUES (?, ?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET node_id = excluded.node_id, since = excluded.since",
            (device_id, self.node_id, time.time()),
        )

    async def release(self, device_id: str) -> bool:
        cur = self._db.execute(
            "DELETE FROM cluster_presence WHERE device_id = ? AND node_id = ?", (device_id, self.node_id)
        )
        return cur.rowcount > 0

    async def holder(self, device_id: str) -> str | None:
        row = self._db.execute(
            "SELECT p.node_id FROM cluster_presence p JOIN cluster_nodes n ON n.node_id = p.node_id "
            "WHERE p.device_id = ? AND n.expires_at > ?",
            (device_id, time.time()),
        ).fetchone()
        return row[0] if row else None

    async def holders(self, device_ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(device_ids), 500):
            chunk = device_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT p.device_id, p.node_id FROM cluster_presence p JOIN cluster_nodes n ON n.node_id = p.node_id "
                f"WHERE p.device_id IN ({marks}) AND n.expires_at > ?",
                (*chunk, time.time()),
            ).fetchall()
            out.update((r[0], r[1]) for r in rows)
        return out

    async def held_by_others(self, device_ids: list[str]) -> list[str]:
        marks = ",".join("?" * len(device_ids))
        rows = self._db.execute(
            f"SELECT device_id FROM cluster_presence WHERE node_id != ? AND device_id IN ({marks}) "
            f"AND node_id IN ({_ALIVE})",
            (self.node_id, *device_ids, time.time()),
        ).fetchall()
        return [r[0] for r in rows]

    async def reset_own(self, *, everything: bool) -> None:
        now = time.time()
        if everything:
            self._db.execute(
                "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = ? "
                "WHERE connection_state != 'Disconnected'",
                (_iso(now),),
            )
            self._db.execute("DELETE FROM cluster_presence")
        else:
            self._release_devices_of("node_id = ?", (self.node_id,), now)

    async def expire_dead(self) -> int:
        now = time.time()
        return self._release_devices_of(f"node_id NOT IN ({_ALIVE})", (now,), now)

    async def acquire_job(self, job_id: str) -> bool:
        cur = self._db.execute(
            "INSERT INTO cluster_job_leases (job_id, node_id) VALUES (?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET node_id = excluded.node_id "
            f"WHERE cluster_job_leases.node_id = excluded.node_id OR cluster_job_leases.node_id NOT IN ({_ALIVE})",
            (job_id, self.node_id, time.time()),
        )
        return cur.rowcount > 0

    async def release_job(self, job_id: str) -> None:
        self._db.execute("DELETE FROM cluster_job_leases WHERE job_id = ? AND node_id = ?", (job_id, self.node_id))

    async def job_holder(self, job_id: str) -> str | None:
        row = self._db.execute(
            f"SELECT node_id FROM cluster_job_leases WHERE job_id = ? AND node_id IN ({_ALIVE})",
            (job_id, time.time()),
        ).fetchone()
        return row[0] if row else None


# ---- PostgreSQL ---------------------------------------------------------------------------
_PG_NOW = "extract(epoch from clock_timestamp())"
_PG_ALIVE = f"SELECT node_id FROM cluster_nodes WHERE expires_at > {_PG_NOW}"
_PG_DDL = """
SELECT pg_advisory_xact_lock(7305066170914231);
CREATE TABLE IF NOT EXISTS cluster_nodes (node_id text PRIMARY KEY, expires_at double precision NOT NULL, started_at double precision NOT NULL);
CREATE TABLE IF NOT EXISTS cluster_presence (device_id text PRIMARY KEY, node_id text NOT NULL, since double precision NOT NULL);
CREATE INDEX IF NOT EXISTS ix_cluster_presence_node ON cluster_presence (node_id);
CREATE TABLE IF NOT EXISTS cluster_job_leases (job_id text PRIMARY KEY, node_id text NOT NULL);
"""


class PostgresClusterStore(ClusterStore):
    """On the PostgreSQL store's asyncpg pool; leases measured by the database clock."""

    def __init__(self, pool: Any, node_id: str, lease_seconds: float) -> None:
        super().__init__(node_id, lease_seconds)
        self._pool = pool
        # Every CONNECT claims, every disconnect releases: a fleet reconnecting at once shares
        # statements (group commit) instead of queueing one pooled connection per device,
        # which also kept the heartbeat's renewal waiting until the node's lease lapsed.
        self._claims: GroupCommit[str, None] = GroupCommit(self._claim_many, max_inflight=2)
        self._releases: GroupCommit[str, bool] = GroupCommit(self._release_many, max_inflight=2)

    async def create_tables(self) -> None:
        """Create the cluster tables if missing (idempotent)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_PG_DDL)

    async def _release_devices_of(self, conn: Any, node_where: str, *params: Any) -> int:
        sub = f"SELECT device_id FROM cluster_presence WHERE {node_where}"
        await conn.execute(
            "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = "
            "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
            f"WHERE connection_state <> 'Disconnected' AND device_id IN ({sub})",
            *params,
        )
        status = await conn.execute(f"DELETE FROM cluster_presence WHERE {node_where}", *params)
        return int(status.split()[-1])

    async def register(self) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            others = await conn.fetchval(
                f"SELECT COUNT(*) FROM cluster_nodes WHERE expires_at > {_PG_NOW} AND node_id <> $1", self.node_id
            )
            await conn.execute(
                f"INSERT INTO cluster_nodes (node_id, expires_at, started_at) VALUES ($1, {_PG_NOW} + $2, {_PG_NOW}) "
                "ON CONFLICT (node_id) DO UPDATE SET expires_at = excluded.expires_at, started_at = excluded.started_at",
                self.node_id, self.lease_seconds,
            )  # fmt: skip
        return int(others) == 0

    async def renew(self) -> None:
        status = await self._pool.execute(
            f"UPDATE cluster_nodes SET expires_at = {_PG_NOW} + $2 WHERE node_id = $1", self.node_id, self.lease_seconds
        )
        if status.endswith(" 0"):
            await self.register()

    async def leave(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._release_devices_of(conn, "node_id = $1", self.node_id)
            await conn.execute("DELETE FROM cluster_job_leases WHERE node_id = $1", self.node_id)
            await conn.execute("DELETE FROM cluster_nodes WHERE node_id = $1", self.node_id)

    async def claim(self, device_id: str) -> None:
        await self._claims.submit(device_id, device_id)

    async def release(self, device_id: str) -> bool:
        return await self._releases.submit(device_id, device_id)

    async def _claim_many(self, device_ids: list[str]) -> list[None | BaseException]:
        await self._pool.execute(
            f"INSERT INTO cluster_presence (device_id, node_id, since) SELECT d, $2, {_PG_NOW} "
            "FROM unnest($1::text[]) AS d ORDER BY d "
            "ON CONFLICT (device_id) DO UPDATE SET node_id = excluded.node_id, since = excluded.since",
            sorted(device_ids), self.node_id,
        )  # fmt: skip
        return [None] * len(device_ids)

    async def _release_many(self, device_ids: list[str]) -> list[bool | BaseException]:
        rows = await self._pool.fetch(
            "DELETE FROM cluster_presence WHERE node_id = $2 AND device_id = ANY($1::text[]) RETURNING device_id",
            device_ids, self.node_id,
        )  # fmt: skip
        released = {r[0] for r in rows}
        return [d in released for d in device_ids]

    async def holder(self, device_id: str) -> str | None:
        return await self._pool.fetchval(  # type: ignore[no-any-return]
            "SELECT p.node_id FROM cluster_presence p JOIN cluster_nodes n ON n.node_id = p.node_id "
            f"WHERE p.device_id = $1 AND n.expires_at > {_PG_NOW}",
            device_id,
        )

    async def holders(self, device_ids: list[str]) -> dict[str, str]:
        rows = await self._pool.fetch(
            "SELECT p.device_id, p.node_id FROM cluster_presence p JOIN cluster_nodes n ON n.node_id = p.node_id "
            f"WHERE p.device_id = ANY($1::text[]) AND n.expires_at > {_PG_NOW}",
            device_ids,
        )
        return {r[0]: r[1] for r in rows}

    async def held_by_others(self, device_ids: list[str]) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT device_id FROM cluster_presence WHERE node_id <> $1 AND device_id = ANY($2::text[]) "
            f"AND node_id IN ({_PG_ALIVE})",
            self.node_id, device_ids,
        )  # fmt: skip
        return [r[0] for r in rows]

    async def reset_own(self, *, everything: bool) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if everything:
                await conn.execute(
                    "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = "
                    "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
                    "WHERE connection_state <> 'Disconnected'"
                )
                await conn.execute("DELETE FROM cluster_presence")
            else:
                await self._release_devices_of(conn, "node_id = $1", self.node_id)

    async def expire_dead(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._release_devices_of(conn, f"node_id NOT IN ({_PG_ALIVE})")

    async def acquire_job(self, job_id: str) -> bool:
        status = await self._pool.execute(
            "INSERT INTO cluster_job_leases (job_id, node_id) VALUES ($1, $2) "
            "ON CONFLICT (job_id) DO UPDATE SET node_id = excluded.node_id "
            f"WHERE cluster_job_leases.node_id = excluded.node_id OR cluster_job_leases.node_id NOT IN ({_PG_ALIVE})",
            job_id, self.node_id,
        )  # fmt: skip
        return not status.endswith(" 0")

    async def release_job(self, job_id: str) -> None:
        await self._pool.execute("DELETE FROM cluster_job_leases WHERE job_id = $1 AND node_id = $2", job_id, self.node_id)

    async def job_holder(self, job_id: str) -> str | None:
        return await self._pool.fetchval(  # type: ignore[no-any-return]
            f"SELECT node_id FROM cluster_job_leases WHERE job_id = $1 AND node_id IN ({_PG_ALIVE})", job_id
        )


async def open_cluster_store(store: HubStore, node_id: str, lease_seconds: float) -> ClusterStore:
    """The cluster tables of ``store`` (created if missing), for node ``node_id``."""
    if store.dialect == "sqlite":
        return SqliteClusterStore(store._conn, node_id, lease_seconds)  # type: ignore[attr-defined]
    if store.dialect == "postgresql":
        pg = PostgresClusterStore(store._pool, node_id, lease_seconds)  # type: ignore[attr-defined]
        await pg.create_tables()
        return pg
    raise ValueError(f"no cluster support for the {store.dialect!r} store")
