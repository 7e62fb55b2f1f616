"""One hub node of a cluster: presence, take-over, revocation, change stream and job leases.

Design ("Where users outgrow one machine"): N identical hub processes share one store
and one NATS. A :class:`ClusterNode` hooks into a started hub's seams:

- ``SessionRegistry`` (via the hub's connection-state hook): a device that connects
  here is claimed in the presence table and announced on ``takeover``; the node that
  held it before closes its connection (one connection per identity across nodes);
- ``MethodInvoker.router``: direct methods go to the node holding the device;
- ``JobEngine.invoke_method``: a job's calls go out in one NATS request per node and batch;
- ``TwinService`` listeners: desired notifications go to the device's node;
- ``RegistryService(on_revoked=...)``: a disabled, deleted or re-keyed device is dropped
  on every node;
- ``ChangeFeed.publisher``: every node's change stream carries every node's changes;
- ``JobEngine.lease``: exactly one node runs each job; a live node adopts the jobs of a
  dead one (the engine's restart rules apply: in-flight method calls become
  failed/HubRestarted, nothing is invoked twice).

A :class:`~iot_flows.hub.cluster._lease.LeaseKeeper` renews the node's lease every
``lease_seconds / 3`` from its own thread on its own database connection; a node killed
with ``kill -9`` loses its claims and its jobs once its lease passes and a live node
fenced it (deleted its lease row). A node whose renewal came late but whose row is still
its own keeps its devices and jobs; one that was fenced stops its jobs, closes its device
connections (they reconnect and are claimed again) and registers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from iot_flows._tasks import BackgroundTasks
from iot_flows.hub import Subscription
from iot_flows.hub.cluster._batching import JobCallBatcher, PresenceLookup
from iot_flows.hub.cluster._bus import Bus, NodeIdInUseError, NoResponderError
from iot_flows.hub.cluster._lease import LeaseKeeper
from iot_flows.hub.cluster._routing import DesiredRelay, MethodRouter
from iot_flows.store import ClusterStore, open_cluster_store
from iot_flows.twin import utc_now

if TYPE_CHECKING:
    from iot_flows.hub import Hub

__all__ = ["ClusterNode", "ClusterSettings", "default_node_id"]

log = logging.getLogger(__name__)
_POLL = 0.25  #: seconds between presence checks while waiting for a device
_CHANGES_PER_MESSAGE = 500  #: most changes in one ``changes`` message (well under NATS' 1 MB)


def default_node_id() -> str:
    """``<hostname>-<pid>``: unique per process on one machine."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How a hub node joins a cluster (``iot-flows hub serve --bus ... --node-id ...``)."""

    bus: str  #: NATS URL, e.g. ``nats://127.0.0.1:4222``
    node_id: str = ""  #: unique per node; empty picks ``<hostname>-<pid>``
    lease_seconds: float = 10.0  #: a silent node loses its devices and jobs after this long


class ClusterNode:
    """Joins a hub to a cluster; ``await start()`` after the hub built its services."""

    def __init__(self, hub: Hub, settings: ClusterSettings) -> None:
        self._hub = hub
        self.settings = settings
        self.node_id = settings.node_id or default_node_id()
        self.bus = Bus(settings.bus, self.node_id, on_reconnected=self.reconcile)
        self.store: ClusterStore
        self.methods: MethodRouter
        self.desired: DesiredRelay
        self.presence: PresenceLookup
        self.job_calls: JobCallBatcher
        self._heartbeat: asyncio.Task[None] | None = None
        self.lease_keeper: LeaseKeeper | None = None
        self._background = BackgroundTasks(f"node {self.node_id}")
        self._outbox: list[dict[str, Any]] = []  #: local changes not yet published

    # ---- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        """Reach NATS (raises BusUnavailableError, one line), then register this node."""
        await self.bus.connect()
        try:
            await self.bus.request(self.bus.subject("node", self.node_id, "ping"), {}, timeout=1.0)
        except (NoResponderError, TimeoutError):
            pass  # no running node answers to this id
        else:
            await self.bus.close()
            raise NodeIdInUseError(f"node id {self.node_id!r} is in use by a running node on {self.bus.url}; pick another --node-id")
        self.store = await open_cluster_store(self._hub.store, self.node_id, self.settings.lease_seconds)
        self.presence = PresenceLookup(self.store)
        self.methods = MethodRouter(self._hub, self.store, self.bus, self.presence)
        self.desired = DesiredRelay(self._hub, self.store, self.bus)
        self.job_calls = JobCallBatcher(self._hub, self.store, self.bus, self.methods)
        alone = await self.store.register()
        self.lease_keeper = LeaseKeeper(self.store.lease_renewer(), self.node_id, self.settings.lease_seconds)
        await self.store.reset_own(everything=alone)
        await self.store.expire_dead()

    async def start(self) -> None:
        """Install the hooks and subscribe (before the hub accepts devices)."""
        hub = self._hub
        await self.bus.subscribe(self.bus.subject("node", self.node_id, "ping"), self._on_ping)
        await self.methods.start()
        await self.job_calls.start()
        await self.desired.start()
        await self.bus.subscribe(self.bus.subject("takeover"), self._on_takeover)
        await self.bus.subscribe(self.bus.subject("revoked"), self._on_revoked)
        await self.bus.subscribe(self.bus.subject("changes"), self._on_change)
        hub.changes.publisher = self._publish_change
        hub.jobs.lease = self
        hub.jobs.held_elsewhere = self.held_elsewhere
        hub.jobs.wait_online = self.wait_online
        assert self.lease_keeper is not None  # set by connect()
        self.lease_keeper.start()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name=f"node-{self.node_id}")

    async def stop_heartbeat(self) -> None:
        """First step of a shutdown: stop renewing the lease and adopting jobs."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            try:
                await self._heartbeat
            except asyncio.CancelledError:
                pass
            self._heartbeat = None
        if self.lease_keeper is not None:
            await asyncio.to_thread(self.lease_keeper.stop)

    async def stop(self) -> None:
        """Last step of a shutdown (after :meth:`leave`): close the bus."""
        await self.stop_heartbeat()
        await self.bus.close()

    async def leave(self) -> None:
        """Drop this node's rows (after its jobs stopped and connections closed)."""
        await self._background.close(grace=2)
        try:
            await self.store.leave()
        except Exception:
            log.exception("node %s could not release its claims", self.node_id)

    async def _beat(self) -> None:
        """Every ``lease_seconds / 3`` on the event loop: act on what the lease keeper found,
        fence dead nodes and adopt the jobs no live node runs."""
        interval = max(self.settings.lease_seconds / 3, 0.05)
        lease = self.lease_keeper
        assert lease is not None  # set by connect()
        while True:
            await asyncio.sleep(interval)
            try:
                if lease.fenced.is_set():
                    await self._rejoin()
                elif not lease.valid():
                    # No renewal for a whole lease (the database unreachable): another node may
                    # fence us any moment, so stop the jobs; they resume once a renewal finds our row.
                    log.warning("node %s missed its lease; stopping its jobs before adopting again", self.node_id)
                    await self._hub.jobs.stop()
                    if not await asyncio.to_thread(lease.renew_now):
                        continue
                await self.store.expire_dead()
                await self._hub.jobs.resume()  # adopt active jobs no live node runs
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node %s heartbeat failed", self.node_id)

    async def _rejoin(self) -> None:
        """Another node fenced this one (deleted its lease row, took its devices and jobs):
        stop the jobs, close the device connections (they reconnect and are claimed again)
        and register again."""
        assert self.lease_keeper is not None
        log.warning("node %s was taken over by another node; stopping its jobs and devices, joining again", self.node_id)
        await self._hub.jobs.stop()
        for device_id in self._hub.sessions.connected_ids():
            self._hub.sessions.release(device_id, "node lease taken over by another node")
        await self.store.register()
        self.lease_keeper.registered()

    async def _on_ping(self, msg: Msg) -> None:
        await self.bus.respond(msg, {"node": self.node_id})

    # ---- presence and take-over --------------------------------------------------------
    async def on_connection_change(self, device_id: str, connected: bool) -> bool:
        """Hub hook before it records a connect/disconnect; False: do not record it."""
        if connected:
            self.desired.forget(device_id)  # it GETs its twin now: order restarts from there
            await self.store.claim(device_id)
            self.bus.publish(self.bus.subject("takeover"), {"deviceId": device_id, "node": self.node_id})
            return True
        return await self.store.release(device_id)  # False: it connected to another node since

    async def held_elsewhere(self, device_id: str) -> bool:
        """True when another node holds the device's connection."""
        holder = await self.presence.holder(device_id)  # one query for every device asked this tick
        return holder is not None and holder != self.node_id

    async def wait_online(self, device_id: str, timeout: float) -> None:
        """Return once the device is subscribed here or held by another live node (or after ``timeout`` s)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sessions = self._hub.sessions
        while not await self.held_elsewhere(device_id):
            left = deadline - loop.time()
            if left <= 0 or sessions.subscribed_link(device_id, Subscription.METHODS) is not None:
                return
            await sessions.wait_for(device_id, Subscription.METHODS, min(_POLL, left))

    async def _on_takeover(self, msg: Msg) -> None:
        data = json.loads(msg.data)
        if data["node"] == self.node_id:
            return
        device_id = data["deviceId"]
        if await self.store.holder(device_id) == self.node_id:
            return  # both connected at once: the store's last claim (ours) wins
        self.desired.forget(device_id)
        self._hub.sessions.release(device_id, "400027 ConnectionForcefullyClosedOnNewConnection")

    def on_revoked(self, device_id: str) -> None:
        """Hub hook: the device was disabled, deleted or re-keyed here; drop it everywhere."""
        self._background.spawn(self._release_revoked(device_id), name=f"revoked-{device_id}")
        self.bus.publish(self.bus.subject("revoked"), {"deviceId": device_id, "node": self.node_id})

    async def _on_revoked(self, msg: Msg) -> None:
        data = json.loads(msg.data)
        if data["node"] != self.node_id:
            self._hub.sessions.forget(data["deviceId"])
            await self._release_revoked(data["deviceId"])

    async def _release_revoked(self, device_id: str) -> None:
        if await self.store.release(device_id):  # it was connected here
            await self._hub.store.set_connection_state(device_id, "Disconnected", utc_now())

    async def reconcile(self) -> None:
        """After a NATS outage: drop local connections that another node took over, or whose
        device was disabled or deleted, while take-over and revocation messages could not travel."""
        sessions = self._hub.sessions
        local = sessions.connected_ids()
        for start in range(0, len(local), 500):
            chunk = local[start : start + 500]
            for device_id in await self.store.held_by_others(chunk):
                sessions.release(device_id, "400027 ConnectionForcefullyClosedOnNewConnection")
            enabled = {r.device_id for r in await self._hub.store.get_many(chunk) if r.status == "enabled"}
            for device_id in chunk:
                if device_id not in enabled:
                    sessions.forget(device_id)
                    await self._release_revoked(device_id)

    # ---- change stream ---------------------------------------------------------------
    def _publish_change(self, change: dict[str, Any]) -> None:
        """Queue a local change; the changes of one loop tick travel as one NATS message."""
        self._outbox.append(change)
        if len(self._outbox) >= _CHANGES_PER_MESSAGE:
            self._flush_changes()
        elif len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush_changes)

    def _flush_changes(self) -> None:
        changes, self._outbox = self._outbox, []
        if changes:
            self.bus.publish(self.bus.subject("changes"), {"node": self.node_id, "changes": changes})

    async def _on_change(self, msg: Msg) -> None:
        data = json.loads(msg.data)
        if data["node"] == self.node_id:
            return
        for change in data["changes"] if "changes" in data else [data["change"]]:
            self._ingest(data["node"], change)

    def _ingest(self, node: str, change: dict[str, Any]) -> None:
        self._hub.changes.ingest({**change, "node": node})
        if change.get("kind") == "job.cancelled":
            self._hub.jobs.interrupt(change["jobId"])

    # ---- job leases (JobEngine.lease protocol) -----------------------------------------
    async def acquire(self, job_id: str) -> bool:
        """True when this node may run ``job_id`` (lease free, ours, or its node dead)."""
        return await self.store.acquire_job(job_id)

    async def release(self, job_id: str) -> None:
        """Release this node's lease on ``job_id``."""
        await self.store.release_job(job_id)

    def valid(self) -> bool:
        """True while this node's last renewal is younger than its lease and it was not
        fenced (no I/O: checked before every job write and call, so a node resumed after a
        pause stops at once)."""
        return self.lease_keeper is not None and self.lease_keeper.valid()
