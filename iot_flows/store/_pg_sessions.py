"""Connection state and stored MQTT sessions of :class:`~iot_flows.store._postgres.PostgresStore`.

Every MQTT CONNECT reads the device's stored session and records ``Connected``; its
SUBSCRIBE stores the session; every disconnect records ``Disconnected``. One statement
per call meant one pooled connection and one COMMIT per call: a fleet reconnecting at
once (a hub restart, a node killed) queued thousands of calls on the pool, which then
answered 503 after the acquire timeout (CONNACK 3), and the refused devices came back
as a reconnect storm. These calls now go through :class:`~iot_flows.store._batch.GroupCommit`:
the calls of one event-loop tick share one ``... FROM unnest(...)`` statement and one
COMMIT, each caller answered after it, and each kind holds at most ``max_inflight``
pooled connections. Inside a :meth:`transaction` they run on its connection, as before.
"""

from __future__ import annotations

import builtins
from typing import Any

import asyncpg

from iot_flows.store._batch import GroupCommit
from iot_flows.store._pg_pool import _LOST, PostgresConnections

__all__ = ["PostgresSessions"]

_STATES = (
    "UPDATE devices AS d SET connection_state = u.state, connection_state_updated_time = u.at,"
    " last_activity_time = CASE WHEN u.state = 'Connected' THEN u.at ELSE d.last_activity_time END"
    " FROM unnest($1::text[], $2::text[], $3::text[]) AS u(device_id, state, at) WHERE d.device_id = u.device_id"
)
_GET_SUBS = "SELECT device_id, mqtt_subscriptions FROM devices WHERE device_id = ANY($1::text[])"
_SET_SUBS = (
    "UPDATE devices AS d SET mqtt_subscriptions = u.subs"
    " FROM unnest($1::text[], $2::text[]) AS u(device_id, subs) WHERE d.device_id = u.device_id"
)


class PostgresSessions(PostgresConnections):
    """``set_connection_state``, ``get_subscriptions`` and ``set_subscriptions``, group-committed."""

    def _init_session_batches(self, max_inflight: int) -> None:
        self.state_writes: GroupCommit[tuple[str, str, str], None] = GroupCommit(
            self._write_states, max_inflight=max_inflight
        )
        self.session_reads: GroupCommit[str, builtins.list[str]] = GroupCommit(
            self._read_sessions, max_inflight=max_inflight
        )
        self.session_writes: GroupCommit[tuple[str, str], None] = GroupCommit(
            self._write_sessions, max_inflight=max_inflight
        )

    async def set_connection_state(self, device_id: str, state: str, when: str) -> None:
        if self._in_transaction():
            await self._write_states_now([(device_id, state, when)])
        else:
            await self.state_writes.submit(device_id, (device_id, state, when))

    async def get_subscriptions(self, device_id: str) -> builtins.list[str]:
        if self._in_transaction():
            return (await self._read_sessions([device_id]))[0]  # type: ignore[return-value]
        return await self.session_reads.submit(device_id, device_id)

    async def set_subscriptions(self, device_id: str, filters: builtins.list[str]) -> None:
        item = (device_id, "\n".join(sorted(filters)))
        if self._in_transaction():
            await self._write_sessions_now([item])
        else:
            await self.session_writes.submit(device_id, item)

    # ---- batches (one item per device: GroupCommit never puts a key twice in a batch) ----
    async def _read_sessions(self, device_ids: builtins.list[str]) -> builtins.list[builtins.list[str] | BaseException]:
        found = {r[0]: r[1] for r in await self._fetch(_GET_SUBS, device_ids)}
        return [[s for s in found[d].split("\n") if s] if d in found else [] for d in device_ids]

    async def _write_states(self, items: builtins.list[tuple[str, str, str]]) -> builtins.list[None | BaseException]:
        return await self._write_batch(_STATES, sorted(items))

    async def _write_states_now(self, items: builtins.list[tuple[str, str, str]]) -> None:
        await self._execute(_STATES, *map(list, zip(*items, strict=True)))

    async def _write_sessions(self, items: builtins.list[tuple[str, str]]) -> builtins.list[None | BaseException]:
        return await self._write_batch(_SET_SUBS, sorted(items))

    async def _write_sessions_now(self, items: builtins.list[tuple[str, str]]) -> None:
        await self._execute(_SET_SUBS, *map(list, zip(*items, strict=True)))

    async def _write_batch(self, sql: str, items: builtins.list[Any]) -> builtins.list[None | BaseException]:
        """One statement for the batch (items sorted by device id, as the twin batch);
        if PostgreSQL refuses it (a lock timeout, a deadlock with another node), each item alone."""
        columns = [list(c) for c in zip(*items, strict=True)]
        try:
            await self._execute(sql, *columns)
            return [None] * len(items)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, _LOST):
                raise
        out: builtins.list[None | BaseException] = []
        for item in items:
            try:
                await self._execute(sql, *([v] for v in item))
                out.append(None)
            except Exception as exc:  # noqa: BLE001 - this item alone fails
                out.append(exc)
        return out
