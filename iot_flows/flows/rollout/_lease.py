"""The same-id guard: a lease held in the hub, on the rollout's anchor twin.

A rollout's state lives in the hub, and so does its guard: the lease is the twin tag
``tags.rollouts.<id>.lease`` of the *anchor*, the first device in id order of the fleet
the rollout matched (waves are cut in that same order, so every run of an id finds the
same anchor). It names its holder (host, process id, flow run) and an expiry; the holder
renews it every third of ``lease_seconds`` with an ``If-Match`` twin update (IoT Hub's
optimistic concurrency, docs/iothub-reference.md §1.3), so two runs racing for it cannot both win: the
loser gets 412 and reads the winner.

A lease stops counting when it expired (its holder stopped renewing: the process died,
or lost the hub), or at once when its holder ran on this host and that process is gone
(``kill -9``): the next run of the id takes it over and says so in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from iot_flows._exceptions import OperationFailedError, PreconditionFailedError
from iot_flows.blocks import HubConnection

__all__ = ["RolloutInProgressError", "RolloutLease", "tag_key"]


class RolloutInProgressError(OperationFailedError):
    """Another run of the same rollout id holds its lease (the message names the id and the holder)."""


def tag_key(rollout_id: str) -> str:
    """The rollout id as a twin tag key and query path segment: ``id_`` plus the id with
    anything but letters, digits and ``_`` as ``_`` (``2.0.0`` -> ``id_2_0_0``)."""
    return "id_" + re.sub(r"[^A-Za-z0-9_]", "_", rollout_id)[:120]


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _process_start(pid: int) -> str | None:
    """The kernel's start tick of ``pid`` (tells a reused pid apart), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_gone(pid: int, started: str | None) -> bool:
    """True when process ``pid`` on this host has ended (or a new process reuses its id)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # a zombie: dead, not yet reaped
    except (OSError, IndexError):
        return False
    return started is not None and _process_start(pid) not in (None, started)


def describe_holder(lease: dict[str, Any]) -> str:
    """``flow run 'name' (id), pid 123 on host, lease until <UTC ISO>``."""
    run = f"flow run {lease.get('flowRunName')!r} ({lease.get('flowRunId')}), " if lease.get("flowRunId") else ""
    return f"{run}pid {lease.get('pid')} on {lease.get('host')}, lease until {lease.get('expires')}"


@dataclass
class RolloutLease:
    """The lease of one rollout id on its anchor twin (see the module docstring).

    ``acquire()`` takes it or raises :class:`RolloutInProgressError`; while held, a
    background task renews it; ``lost`` turns True when another run took it over;
    ``release()`` removes it.
    """

    conn: HubConnection
    rollout_id: str
    anchor: str
    lease_seconds: float = 60.0
    flow_run_id: str | None = None
    flow_run_name: str | None = None

    def __post_init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.lost = False
        self.took_over: str | None = None
        self.stale_run_id: str | None = None
        self._renewer: asyncio.Task[None] | None = None

    def _doc(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"token": self.token, "host": socket.gethostname(), "pid": pid, "processStart": _process_start(pid),
                "flowRunId": self.flow_run_id, "flowRunName": self.flow_run_name,
                "expires": _iso(_now() + timedelta(seconds=self.lease_seconds))}  # fmt: skip

    def _patch(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        return {"tags": {"rollouts": {tag_key(self.rollout_id): {"lease": lease}}}}

    @staticmethod
    def _current(twin: dict[str, Any], key: str) -> dict[str, Any] | None:
        lease = (((twin.get("tags") or {}).get("rollouts") or {}).get(key) or {}).get("lease")
        return lease if isinstance(lease, dict) else None

    def _stale(self, lease: dict[str, Any]) -> str | None:
        """Why ``lease`` no longer counts, or None while its holder is alive."""
        try:
            expires = datetime.fromisoformat(str(lease.get("expires")).replace("Z", "+00:00"))
        except ValueError:
            return "its lease has no valid expiry"
        if expires <= _now():
            return f"its lease expired at {lease.get('expires')} (no heartbeat)"
        if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
            if _process_gone(lease["pid"], lease.get("processStart")):
                return f"its process {lease['pid']} on this host is gone"
        return None

    async def acquire(self) -> None:
        """Take the lease (taking over a stale one: ``took_over`` says whose and why).

        Raises:
            RolloutInProgressError: a live run holds it (the message names the id and the holder).
        """
        key = tag_key(self.rollout_id)
        async with self.conn.get_client() as hub:
            for _ in range(5):
                twin = await hub.get_twin(self.anchor)
                held = self._current(twin, key)
                if held and held.get("token") != self.token:
                    why = self._stale(held)
                    if why is None:
                        raise RolloutInProgressError(
                            f"rollout {self.rollout_id} is already running: held by {describe_holder(held)} "
                            f"(twin tag rollouts.{key}.lease of {self.anchor})"
                        )
                    self.took_over = f"{describe_holder(held)}: {why}"
                    self.stale_run_id = str(held["flowRunId"]) if held.get("flowRunId") else None
                try:
                    await hub.update_twin(self.anchor, self._patch(self._doc()), etag=str(twin.get("etag") or "*"))
                except PreconditionFailedError:
                    continue  # the twin changed meanwhile (maybe a rival's lease): read it again
                self._renewer = asyncio.create_task(self._renew())
                return
        raise RolloutInProgressError(f"rollout {self.rollout_id}: could not take its lease on {self.anchor} (twin kept changing)")

    async def _renew(self) -> None:
        key = tag_key(self.rollout_id)
        while True:
            await asyncio.sleep(max(self.lease_seconds / 3, 0.05))
            try:
                async with self.conn.get_client() as hub:
                    twin = await hub.get_twin(self.anchor)
                    held = self._current(twin, key)
                    if not held or held.get("token") != self.token:
                        self.lost = True
                        return
                    await hub.update_twin(self.anchor, self._patch(self._doc()), etag=str(twin.get("etag") or "*"))
            except PreconditionFailedError:
                continue  # another write to the anchor: check again at once next round
            except Exception:  # noqa: BLE001 - the hub is unreachable: keep trying until the lease runs out
                continue

    async def release(self) -> None:
        """Stop renewing and remove the lease (only when this run still holds it)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        with contextlib.suppress(Exception):
            async with self.conn.get_client() as hub:
                twin = await hub.get_twin(self.anchor)
                held = self._current(twin, tag_key(self.rollout_id))
                if held and held.get("token") == self.token:
                    await hub.update_twin(self.anchor, self._patch(None), etag=str(twin.get("etag") or "*"))
