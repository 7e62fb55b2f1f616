"""What the nodes of a cluster share in the store: node leases, presence, job leases.

This is the only place the cluster touches the database, so it can move onto the store
interface (and PostgreSQL) as one unit. Three tables:

==========================  ==================================================================
``cluster_nodes``           one row per node: ``expires_at`` (Unix seconds) is renewed by the
                            node's heartbeat; a node whose lease passed is dead.
``cluster_presence``        "which node holds device X": one row per connected device.
                            A claim counts only while its node's lease is alive.
``cluster_job_leases``      which node runs each job; free again once that node is dead.
==========================  ==================================================================

Times are wall-clock seconds (``time.time()``), so the nodes' clocks must be in sync
(NTP), as with any lease. Every method is one short statement on the store's writer
connection (event-loop thread), committed on return.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["ClusterStore"]

CLUSTER_DDL = """
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node_id    TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_presence (
    device_id  TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    since      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_cluster_presence_node ON cluster_presence (node_id);
CREATE TABLE IF NOT EXISTS cluster_job_leases (
    job_id     TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL
);
"""

_ALIVE = "SELECT node_id FROM cluster_nodes WHERE expires_at > ?"


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class ClusterStore:
    """Node leases, presence and job leases on a SQLite connection shared by all nodes."""

    def __init__(self, conn: sqlite3.Connection, node_id: str, lease_seconds: float) -> None:
        self._db = conn
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self._db.executescript(CLUSTER_DDL)

    # ---- node leases -----------------------------------------------------------------
    def register(self) -> bool:
        """Write this node's lease; return True when no *other* node is alive (first node)."""
        now = time.time()
        alone = self._db.execute(
            "SELECT COUNT(*) FROM cluster_nodes WHERE expires_at > ? AND node_id != ?", (now, self.node_id)
        ).fetchone()[0] == 0
        self._db.execute(
            "INSERT INTO cluster_nodes (node_id, expires_at, started_at) VALUES (?, ?, ?) "
            "ON CONFLICT(node_id) DO UPDATE SET expires_at = excluded.expires_at, started_at = excluded.started_at",
            (self.node_id, now + self.lease_seconds, now),
        )
        return bool(alone)

    def renew(self) -> float:
        """Extend this node's lease by ``lease_seconds``; return the new expiry."""
        expires = time.time() + self.lease_seconds
        cur = self._db.execute("UPDATE cluster_nodes SET expires_at = ? WHERE node_id = ?", (expires, self.node_id))
        if cur.rowcount == 0:
            self.register()
        return expires

    def leave(self) -> None:
        """Graceful stop: drop this node's claims and lease at once (no wait for expiry)."""
        with_tx = self._db
        with_tx.execute("BEGIN IMMEDIATE")
        try:
            self._release_devices_of("node_id = ?", (self.node_id,), time.time())
            with_tx.execute("DELETE FROM cluster_job_leases WHERE node_id = ?", (self.node_id,))
            with_tx.execute("DELETE FROM cluster_nodes WHERE node_id = ?", (self.node_id,))
        except BaseException:
            with_tx.execute("ROLLBACK")
            raise
        with_tx.execute("COMMIT")

    def alive_nodes(self) -> list[str]:
        return [r[0] for r in self._db.execute(_ALIVE + " ORDER BY node_id", (time.time(),))]

    # ---- presence --------------------------------------------------------------------
    def claim(self, device_id: str) -> None:
        """This node now holds ``device_id`` (the newest connection wins)."""
        self._db.execute(
            "INSERT INTO cluster_presence (device_id, node_id, since) VALUES (?, ?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET node_id = excluded.node_id, since = excluded.since",
            (device_id, self.node_id, time.time()),
        )

    def release(self, device_id: str) -> bool:
        """Drop this node's claim; False when another node holds the device now."""
        cur = self._db.execute(
            "DELETE FROM cluster_presence WHERE device_id = ? AND node_id = ?", (device_id, self.node_id)
        )
        return cur.rowcount > 0

    def holder(self, device_id: str) -> str | None:
        """The live node holding ``device_id``, or None (claims of dead nodes do not count)."""
        row = self._db.execute(
            "SELECT p.node_id FROM cluster_presence p JOIN cluster_nodes n ON n.node_id = p.node_id "
            "WHERE p.device_id = ? AND n.expires_at > ?",
            (device_id, time.time()),
        ).fetchone()
        return row[0] if row else None

    def held_by_others(self, device_ids: list[str]) -> list[str]:
        """Those of ``device_ids`` that another live node claims."""
        marks = ",".join("?" * len(device_ids))
        rows = self._db.execute(
            f"SELECT device_id FROM cluster_presence WHERE node_id != ? AND device_id IN ({marks}) "
            f"AND node_id IN ({_ALIVE})",
            (self.node_id, *device_ids, time.time()),
        ).fetchall()
        return [r[0] for r in rows]

    def _release_devices_of(self, node_where: str, params: tuple[object, ...], now: float) -> int:
        """Mark the devices of the selected nodes disconnected and drop their claims."""
        sub = f"SELECT device_id FROM cluster_presence WHERE {node_where}"
        self._db.execute(
            "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = ? "
            f"WHERE connection_state != 'Disconnected' AND device_id IN ({sub})",
            (_iso(now), *params),
        )
        return self._db.execute(f"DELETE FROM cluster_presence WHERE {node_where}", params).rowcount

    def reset_own(self, *, everything: bool) -> None:
        """Start of a node: forget what an earlier run of it held (and, for the first node
        of a cluster, every connection state: no connection survives a full restart)."""
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

    def expire_dead(self) -> int:
        """Release every claim of a node whose lease passed; return how many were dropped."""
        now = time.time()
        return self._release_devices_of(f"node_id NOT IN ({_ALIVE})", (now,), now)

    # ---- job leases ------------------------------------------------------------------
    def acquire_job(self, job_id: str) -> bool:
        """Take the lease of ``job_id`` if it is free, ours, or held by a dead node."""
        cur = self._db.execute(
            "INSERT INTO cluster_job_leases (job_id, node_id) VALUES (?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET node_id = excluded.node_id "
            f"WHERE cluster_job_leases.node_id = excluded.node_id OR cluster_job_leases.node_id NOT IN ({_ALIVE})",
            (job_id, self.node_id, time.time()),
        )
        return cur.rowcount > 0

    def release_job(self, job_id: str) -> None:
        self._db.execute("DELETE FROM cluster_job_leases WHERE job_id = ? AND node_id = ?", (job_id, self.node_id))

    def job_holder(self, job_id: str) -> str | None:
        row = self._db.execute(
            f"SELECT node_id FROM cluster_job_leases WHERE job_id = ? AND node_id IN ({_ALIVE})",
            (job_id, time.time()),
        ).fetchone()
        return row[0] if row else None
