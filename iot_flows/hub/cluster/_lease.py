"""A node's lease, renewed from a thread of its own on a database connection of its own.

The node lease used to be renewed by a task on the hub's event loop through the store's
pool: under CPU starvation (a busy loop) or with every pooled connection taken by device
traffic, renewals came late and the node presumed itself dead, stopping its own jobs
although nobody had taken them. :class:`LeaseKeeper` renews every ``lease_seconds / 3``
from a daemon thread (the GIL is handed over every few milliseconds, so a busy loop does
not hold it back) through a :class:`~iot_flows.store.LeaseRenewer`.

What a late renewal means is decided by the store, not the wall clock: another node takes
over a node's devices and jobs only after deleting its lease row (fencing), and a renewal
only extends a row that still exists. So:

* ``expires`` (Unix seconds) is when the last renewal that found the row runs out;
  ``valid()`` is true before then, checked without I/O before every job write and call
  (a node paused with ``kill -STOP`` stops at once when resumed);
* ``fenced`` is set when a renewal found the row gone: the node must stop its jobs, then
  register again (the node's heartbeat on the event loop does that).
"""

from __future__ import annotations

import logging
import threading
import time

from iot_flows.store import LeaseRenewer

__all__ = ["LeaseKeeper"]

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews node ``node_id``'s lease through ``renewer`` every ``lease_seconds / 3`` from its own thread."""

    def __init__(self, renewer: LeaseRenewer, node_id: str, lease_seconds: float) -> None:
        self._renewer = renewer
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.expires = time.time() + lease_seconds  #: the lease runs out then (Unix seconds)
        self.fenced = threading.Event()  #: a renewal found the row gone: the node was taken over
        self.renewals = 0  #: renewals that found the row (for tests and logs)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one renewal at a time (thread and renew_now)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start renewing (after the node registered)."""
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.node_id}", daemon=True)
        self._thread.start()

    def valid(self) -> bool:
        """True while the last renewal is younger than the lease and the node was not fenced (no I/O)."""
        return time.time() < self.expires and not self.fenced.is_set()

    def registered(self) -> None:
        """The node registered (again): its lease starts now, not fenced."""
        self.fenced.clear()
        self.expires = time.time() + self.lease_seconds

    def renew_now(self) -> bool:
        """One renewal (blocking; call from a thread). True when the row was still the node's;
        False when fenced or the database could not be reached (the lease then runs out)."""
        with self._lock:
            started = time.time()
            try:
                ours = self._renewer.renew()
            except Exception as exc:
                log.warning("node %s could not renew its lease: %s", self.node_id, exc)
                return False
            if not ours:
                if not self.fenced.is_set():
                    log.warning("node %s: another node presumed it dead and took over its devices and jobs", self.node_id)
                self.fenced.set()
                return False
            late = started - self.expires
            if late > 0:
                log.warning("node %s renewed its lease %.1f s late; nobody had taken it over, so it keeps its jobs",
                            self.node_id, late)
            self.expires = started + self.lease_seconds
            self.renewals += 1
            return True

    def _run(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        try:
            while not self._stop.wait(interval):
                if not self.fenced.is_set():
                    self.renew_now()
        finally:
            with self._lock:
                self._renewer.close()

    def stop(self) -> None:
        """Stop renewing (the lease then runs out unless the node leaves first) and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self.lease_seconds, 5))
            self._thread = None
