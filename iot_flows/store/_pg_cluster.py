"""The cluster tables on PostgreSQL (see :mod:`iot_flows.store._cluster`): leases measured
by the database clock, so nodes on several machines need no clock agreement."""

from __future__ import annotations

import asyncio
from typing import Any

from iot_flows.store._batch import GroupCommit
from iot_flows.store._cluster import _FENCED, ClusterStore, LeaseRenewer

__all__ = ["PostgresClusterStore"]

_PG_NOW = "extract(epoch from clock_timestamp())"
_PG_ALIVE = f"SELECT node_id FROM cluster_nodes WHERE expires_at > {_PG_NOW}"
_PG_DDL = """
SELECT pg_advisory_xact_lock(7305066170914231);
CREATE TABLE IF NOT EXISTS cluster_nodes (node_id text PRIMARY KEY, expires_at double precision NOT NULL, started_at double precision NOT NULL);
CREATE TABLE IF NOT EXISTS cluster_presence (device_id text PRIMARY KEY, node_id text NOT NULL, since double precision NOT NULL);
CREATE INDEX IF NOT EXISTS ix_cluster_presence_node ON cluster_presence (node_id);
CREATE TABLE IF NOT EXISTS cluster_job_leases (job_id text PRIMARY KEY, node_id text NOT NULL);
"""


_PG_RENEW = f"UPDATE cluster_nodes SET expires_at = {_PG_NOW} + $2 WHERE node_id = $1"


class _PgRenewer(LeaseRenewer):
    """Its own asyncpg connection (the pool's connect arguments) on an event loop of the
    renewing thread, opened on first use and again after a lost connection."""

    def __init__(self, args: Any, kwargs: Any, node_id: str, lease_seconds: float) -> None:
        self._args, self._kwargs = args, kwargs
        self._node_id, self._lease = node_id, lease_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None

    def renew(self) -> bool:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(asyncio.wait_for(self._renew(), max(self._lease / 2, 0.1)))

    async def _renew(self) -> bool:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(*self._args, **self._kwargs)
        try:
            status = await self._conn.execute(_PG_RENEW, self._node_id, self._lease)
        except BaseException:
            self._conn.terminate()  # a fresh connection next time
            self._conn = None
            raise
        return not str(status).endswith(" 0")

    def close(self) -> None:
        if self._loop is not None:
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            self._loop.close()
            self._loop = None


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

    async def renew(self) -> bool:
        status = await self._pool.execute(_PG_RENEW, self.node_id, self.lease_seconds)
        return not str(status).endswith(" 0")

    def lease_renewer(self) -> LeaseRenewer:
        return _PgRenewer(self._pool._connect_args, self._pool._connect_kwargs, self.node_id, self.lease_seconds)

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
            await conn.execute(f"DELETE FROM cluster_nodes WHERE expires_at <= {_PG_NOW}")
            return await self._release_devices_of(conn, _FENCED)

    async def acquire_job(self, job_id: str) -> bool:
        status = await self._pool.execute(
            "INSERT INTO cluster_job_leases (job_id, node_id) VALUES ($1, $2) "
            "ON CONFLICT (job_id) DO UPDATE SET node_id = excluded.node_id "
            "WHERE cluster_job_leases.node_id = excluded.node_id OR cluster_job_leases.node_id NOT IN "
            "(SELECT node_id FROM cluster_nodes)",
            job_id, self.node_id,
        )  # fmt: skip
        return not status.endswith(" 0")

    async def release_job(self, job_id: str) -> None:
        await self._pool.execute("DELETE FROM cluster_job_leases WHERE job_id = $1 AND node_id = $2", job_id, self.node_id)

    async def job_holder(self, job_id: str) -> str | None:
        return await self._pool.fetchval(  # type: ignore[no-any-return]
            f"SELECT node_id FROM cluster_job_leases WHERE job_id = $1 AND node_id IN ({_PG_ALIVE})", job_id
        )
