"""What the nodes of a hub cluster share in the store: node leases, presence, job leases.

The one place the cluster (``iot_flows.hub.cluster``) touches the database, SQLite or
PostgreSQL, kept apart from :class:`~iot_flows.store.HubStore` because only hub nodes
started with ``--bus`` use it. Three tables:

==========================  ==================================================================
``cluster_nodes``           one row per node; ``expires_at`` (Unix seconds) is renewed by the
                            node's lease keeper; a node whose lease passed is dead, and the
                            first live node to see it so deletes its row (fencing).
``cluster_presence``        "which node holds device X": one row per connected device; a
                            claim counts only while its node's lease is alive.
``cluster_job_leases``      which node runs each job; free again once that node is dead.
==========================  ==================================================================

Times: SQLite (one machine) uses the process clock; PostgreSQL uses the database's
clock (``clock_timestamp()``), so nodes on several machines need no clock agreement.
Every method is one short transaction, committed on return.

Fencing: a node's row is its lease. Another node takes over a dead node's devices and jobs
only after deleting that row (``expire_dead``), in the same transaction; a renewal
(``LeaseRenewer.renew``, on a connection of its own) extends the row only while it still
exists. So a node whose renewal was late (busy, or the database locked) but whose row is
still there keeps its jobs and devices: nobody took them; a renewal that finds the row
gone tells the node it was fenced and must stop its jobs.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any

from iot_flows.store._base import HubStore

__all__ = ["ClusterStore", "LeaseRenewer", "open_cluster_store"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class LeaseRenewer(ABC):
    """Renews one node's lease on a database connection of its own (not the store's pool
    or writer connection) with blocking calls, from one thread at a time (the caller
    serialises them): a pool exhausted by device traffic, or a busy event loop, does not
    hold the renewal back."""

    @abstractmethod
    def renew(self) -> bool:
        """Extend the node's lease; False when its row is gone: another node presumed it
        dead and took over its devices and jobs (fenced). Raises on a database error."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (from the renewing thread)."""


class ClusterStore(ABC):
    """Node leases, presence and job leases shared by every node of one hub."""

    def __init__(self, node_id: str, lease_seconds: float) -> None:
        self.node_id = node_id
        self.lease_seconds = lease_seconds

    @abstractmethod
    async def register(self) -> bool:
        """Write this node's lease; True when no *other* node is alive (the first node)."""

    @abstractmethod
    async def renew(self) -> bool:
        """Extend this node's lease by ``lease_seconds``; False when its row is gone (fenced:
        another node took over its devices and jobs; ``register`` again)."""

    @abstractmethod
    def lease_renewer(self) -> LeaseRenewer:
        """A renewer of this node's lease on a connection of its own (see :class:`LeaseRenewer`)."""

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
        """Fence the nodes whose lease passed (delete their rows) and release every claim of
        a node without a row (their devices become Disconnected); the claims released."""

    @abstractmethod
    async def acquire_job(self, job_id: str) -> bool:
        """Take the lease of ``job_id`` if it is free, ours, or held by a fenced node (no row)."""

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
_FENCED = "node_id NOT IN (SELECT node_id FROM cluster_nodes)"  #: claims of a node without a row
_RENEW = "UPDATE cluster_nodes SET expires_at = ? WHERE node_id = ?"


class _SqliteRenewer(LeaseRenewer):
    """Its own SQLite connection, opened in the renewing thread on first use."""

    def __init__(self, path: str, node_id: str, lease_seconds: float) -> None:
        self._path, self._node_id, self._lease = path, node_id, lease_seconds
        self._db: sqlite3.Connection | None = None

    def renew(self) -> bool:
        if self._db is None:
            # autocommit; wait for another process's write lock at most a third of the lease;
            # used from one thread at a time (the caller serialises), not always the same one
            self._db = sqlite3.connect(self._path, timeout=max(self._lease / 3, 0.05), isolation_level=None,
                                       check_same_thread=False)
        return self._db.execute(_RENEW, (time.time() + self._lease, self._node_id)).rowcount > 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class SqliteClusterStore(ClusterStore):
    """On the SQLite store's writer connection (event-loop thread; WAL across processes)."""

    def __init__(self, conn: sqlite3.Connection, node_id: str, lease_seconds: float, path: str = "") -> None:
        super().__init__(node_id, lease_seconds)
        self._db = conn
        self._path = path
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

    async def renew(self) -> bool:
        return self._db.execute(_RENEW, (time.time() + self.lease_seconds, self.node_id)).rowcount > 0

    def lease_renewer(self) -> LeaseRenewer:
        return _SqliteRenewer(self._path, self.node_id, self.lease_seconds)

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
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM cluster_nodes WHERE expires_at <= ?", (now,))
            released = self._release_devices_of(_FENCED, (), now)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return released

    async def acquire_job(self, job_id: str) -> bool:
        cur = self._db.execute(
            "INSERT INTO cluster_job_leases (job_id, node_id) VALUES (?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET node_id = excluded.node_id "
            "WHERE cluster_job_leases.node_id = excluded.node_id OR cluster_job_leases.node_id NOT IN "
            "(SELECT node_id FROM cluster_nodes)",
            (job_id, self.node_id),
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


async def open_cluster_store(store: HubStore, node_id: str, lease_seconds: float) -> ClusterStore:
    """The cluster tables of ``store`` (created if missing), for node ``node_id``."""
    if store.dialect == "sqlite":
        return SqliteClusterStore(store._conn, node_id, lease_seconds, store.path)  # type: ignore[attr-defined]
    if store.dialect == "postgresql":
        from iot_flows.store._pg_cluster import PostgresClusterStore

        pg = PostgresClusterStore(store._pool, node_id, lease_seconds)  # type: ignore[attr-defined]
        await pg.create_tables()
        return pg
    raise ValueError(f"no cluster support for the {store.dialect!r} store")
