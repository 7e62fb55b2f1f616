"""The hub's change stream: twin changes, connection changes and job state changes.

An in-memory ring of recent changes with increasing sequence numbers, served by the
extension endpoint ``GET /iot-flows/changes?since=N&wait=S`` (long poll). It is what
Azure routes as ``twinChangeEvents`` / lifecycle events; here the Prefect layer polls it
and turns changes into Prefect events. Not durable: a consumer that falls more than
``capacity`` changes behind is told so (``truncated``) and resumes from the oldest kept.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from iot_flows.store import DeviceRecord
from iot_flows.twin import utc_now

__all__ = ["ChangeFeed"]


class ChangeFeed:
    """Append-only ring of changes with long-poll readers (event-loop thread only)."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._changes: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._last = 0
        self._waiters: list[asyncio.Future[None]] = []
        #: Set by a cluster node: sends each local change to the other nodes.
        self.publisher: Callable[[dict[str, Any]], None] | None = None

    @property
    def last_sequence(self) -> int:
        """Sequence number of the newest change (0 before the first)."""
        return self._last

    def append(self, change: dict[str, Any]) -> None:
        """Record a change made on this node: publish it to peer nodes (cluster), then ingest it."""
        if self.publisher is not None:
            self.publisher(change)
        self.ingest(change)

    def ingest(self, change: dict[str, Any]) -> None:
        """Append without publishing (a change another hub node made)."""
        self._last = next(self._seq)
        self._changes.append({"sequence": self._last, "time": utc_now(), **change})
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
        """Changes with sequence > ``since`` (at most ``limit``), and whether some were lost."""
        oldest = self._changes[0]["sequence"] if self._changes else self._last + 1
        truncated = since + 1 < oldest and since < self._last
        out = [c for c in self._changes if c["sequence"] > since][:limit] if since < self._last else []
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
