"""The hub's change stream: twin changes, connection changes and job state changes.

An in-memory ring of recent changes with increasing sequence numbers, served by the
extension endpoint ``GET /iot-flows/changes?since=N&wait=S`` (long poll). It is what
Azure routes as ``twinChangeEvents`` / lifecycle events; here the Prefect layer polls it
and turns changes into Prefect events. Not durable: a consumer that falls more than
``capacity`` changes behind is told so (``truncated``) and resumes from the oldest kept.

Each kept change is one compact JSON ``bytes`` object in a fixed list (sequence numbers
are consecutive, so a change's slot is its sequence modulo the capacity and the number is
not stored): about 200 bytes per twin change instead of ~550 as nested dicts, and the
ring's memory is bounded by ``capacity`` (``hub serve --change-feed-capacity``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import orjson

from iot_flows.store import DeviceRecord
from iot_flows.twin import utc_now

__all__ = ["ChangeFeed"]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def _entry(change: dict[str, Any]) -> bytes:
    """The change as compact JSON bytes. Twin and connection changes (one per reported
    PATCH) go through orjson: their patches passed the twin rules (finite numbers within
    2^52), so it writes what ``json`` would; anything else (job documents) through ``json``."""
    if str(change.get("kind", "")).startswith(("twin.", "device.")):
        try:
            return bytes(memoryview(orjson.dumps(change)))  # an exact-size copy: orjson over-allocates
        except TypeError:
            pass
    return _encode(change).encode()


class ChangeFeed:
    """Append-only ring of changes with long-poll readers (event-loop thread only).

    ``capacity``: how many of the newest changes are kept (>= 1); raises ``ValueError``
    otherwise.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        if capacity < 1:
            raise ValueError(f"change feed capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        self._ring: list[bytes | None] = [None] * capacity
        self._last = 0
        self._waiters: list[asyncio.Future[None]] = []
        #: Set by a cluster node: sends each local change to the other nodes.
        self.publisher: Callable[[dict[str, Any]], None] | None = None

    @property
    def last_sequence(self) -> int:
        """Sequence number of the newest change (0 before the first)."""
        return self._last

    @property
    def oldest_sequence(self) -> int:
        """The sequence number of the oldest change kept (``last_sequence + 1`` when none)."""
        return max(1, self._last - self.capacity + 1) if self._last else 1

    def __len__(self) -> int:
        return min(self._last, self.capacity)

    def append(self, change: dict[str, Any]) -> None:
        """Record a change made on this node: publish it to peer nodes (cluster), then ingest it."""
        if self.publisher is not None:
            self.publisher(change)
        self.ingest(change)

    def ingest(self, change: dict[str, Any]) -> None:
        """Append without publishing (a change another hub node made)."""
        entry = _entry({"time": utc_now(), **change})
        self._ring[self._last % self.capacity] = entry  # slot of sequence s: (s - 1) % capacity
        self._last += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- sources ------------------------------------------------------------------------
    def on_twin_change(self, device_id: str, section: str, patch: dict[str, Any], record: DeviceRecord) -> None:
        """Twin listener: append ``twin.reported`` / ``twin.desired`` with the patch and new version."""
        version = {"reported": record.reported_version, "desired": record.desired_version}.get(section)
        self.append({"kind": f"twin.{section}", "deviceId": device_id, "patch": patch, "version": version})

    def on_connection_change(self, device_id: str, connected: bool) -> None:
        """Append ``device.connected`` or ``device.disconnected``."""
        self.append({"kind": "device.connected" if connected else "device.disconnected", "deviceId": device_id})

    def on_job_change(self, job: dict[str, Any]) -> None:
        """Job listener: append ``job.<status>`` with the job document."""
        self.append({"kind": f"job.{job['status']}", "jobId": job["jobId"], "job": job})

    # ---- readers ------------------------------------------------------------------------
    def read(self, since: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Changes with sequence > ``since`` (at most ``limit``), and whether some were lost.

        Each change is a dict ``{"sequence", "time", "kind", ...}``.
        """
        oldest = self.oldest_sequence
        truncated = since + 1 < oldest and since < self._last
        first = max(since + 1, oldest)
        end = min(self._last, first + max(limit, 0) - 1)
        out: list[dict[str, Any]] = []
        for sequence in range(first, end + 1):
            entry = self._ring[(sequence - 1) % self.capacity]
            assert entry is not None
            out.append({"sequence": sequence, **json.loads(entry)})
        return out, truncated

    async def wait(self, since: int, timeout: float) -> None:
        """Return once a change after ``since`` exists, or after ``timeout`` seconds."""
        if self._last > since or timeout <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
