"""A fleet of simulated devices in one process, one asyncio loop, no thread per device.

::

    async with Fleet(service_connection_string, count=1000, mqtt_host="127.0.0.1",
                     mqtt_port=1883, http_url="http://127.0.0.1:8080", seed=7) as fleet:
        await fleet.start()          # provision (bulk, idempotent), then connect all
        print(fleet.stats)           # connected/total, counters of what devices did
        ...                          # run flows against the hub meanwhile

Devices are ``{prefix}-{index:05d}``; their keys are derived from the service key
(:mod:`iot_flows.device._provision`), so a restart reuses the same identities. Each
device is a :class:`DeviceClient` plus a :class:`DeviceBehaviour`; a few worker tasks
connect them (``connect_concurrency`` at a time) and one task drives churn.

Scale notes (``bench/bench_fleet.py``, 2 vCPUs): a device costs one socket and about
7.6 KB of simulator RSS over plain MQTT (about 27-32 KB over TLS); 10,000 devices
connect in about 12 s, with the hub and the simulator each using about 1 ms of CPU
per device. The process needs a file descriptor per device, so the
soft ``RLIMIT_NOFILE`` is raised towards the hard limit. Beyond ~12,000 devices on a
loopback hub, sockets are spread over several source addresses (127.0.0.1,
127.0.0.2, ...), because the kernel's ephemeral-port search for one source address and
one destination slows connecting down sharply past ~14k sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import resource
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from iot_flows._exceptions import IoTFlowsError, UnauthorizedError
from iot_flows._sas import ConnectionString
from iot_flows._tasks import BackgroundTasks
from iot_flows.device._behaviours import BehaviourConfig, DeviceBehaviour, chance
from iot_flows.device._client import Backoff, DeviceClient
from iot_flows.device._provision import ProvisionResult, device_connection_string, provision_devices

__all__ = ["Fleet", "FleetStats", "SimulatedDevice"]

log = logging.getLogger(__name__)

#: Sockets per loopback source address before the fleet spreads over more of them.
SOCKETS_PER_SOURCE_ADDRESS = 12_000


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of a fleet: how many devices are online, and what they did."""

    total: int
    connected: int
    failed: int
    reconnects: int
    counters: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    """Why an offline device's latest connection attempt failed (``None``: every device is online)."""

    def __str__(self) -> str:
        return f"{self.connected}/{self.total} connected, {self.failed} failed, {self.reconnects} reconnects"


class SimulatedDevice:
    """One simulated device: its identity, :class:`DeviceClient` and behaviour."""

    __slots__ = ("device_id", "client", "behaviour")

    def __init__(self, client: DeviceClient, behaviour: DeviceBehaviour) -> None:
        self.device_id = client.device_id
        self.client = client
        self.behaviour = behaviour

    @property
    def connected(self) -> bool:
        """True while the device is online."""
        return self.client.connected

    @property
    def firmware_version(self) -> str:
        """The firmware version the device runs (``firmware.currentFwVersion``)."""
        return self.behaviour.fw_version

    def __repr__(self) -> str:
        state = "connected" if self.connected else "offline"
        return f"<SimulatedDevice {self.device_id} {state} fw={self.firmware_version}>"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class Fleet:
    """Provision and run ``count`` simulated devices against a hub.

    Args:
        hub: the service connection string (``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...``).
        count: number of devices; ``prefix``/``start_index`` name them.
        mqtt_host, mqtt_port: the device endpoint (default ``HostName``, 8883 with TLS, else 1883).
        http_url: base URL of the service REST API (default ``https://{HostName}``).
        tls, ca_file: MQTT over TLS (also used to verify ``http_url``).
        seed: makes fault injection reproducible.
        behaviour: timings and fault rates.
        provision: create/update the devices through the bulk registry API first.
        connect_concurrency: devices connecting at the same time.
        source_addresses: local addresses to bind, round-robin; ``"auto"`` spreads large
            loopback fleets over 127.0.0.x; ``None`` never binds.
        keepalive, token_ttl, backoff: passed to each :class:`DeviceClient`.
    """

    def __init__(
        self,
        hub: str,
        *,
        count: int,
        prefix: str = "sim",
        start_index: int = 0,
        mqtt_host: str | None = None,
        mqtt_port: int | None = None,
        http_url: str | None = None,
        tls: bool | None = None,
        ca_file: str | None = None,
        seed: int | str = 0,
        behaviour: BehaviourConfig | None = None,
        provision: bool = True,
        connect_concurrency: int = 256,
        source_addresses: Sequence[str] | Literal["auto"] | None = "auto",
        keepalive: int = 60,
        token_ttl: int = 3600,
        backoff: Backoff = Backoff(initial=1.0, maximum=30.0),
    ) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        self._cs = ConnectionString.parse(hub)
        if not self._cs.shared_access_key_name:
            raise ValueError("Fleet needs a service connection string (with SharedAccessKeyName)")
        self.count = count
        self.prefix = prefix
        self.start_index = start_index
        self.mqtt_host = mqtt_host or self._cs.host_name
        self.mqtt_port = mqtt_port
        self.http_url = http_url
        self.tls = tls if tls is not None else bool(ca_file or mqtt_host is None)
        self.ca_file = ca_file
        self.seed = seed
        self.behaviour = behaviour or BehaviourConfig()
        self.provision_first = provision
        self.connect_concurrency = max(1, connect_concurrency)
        self.keepalive = keepalive
        self.token_ttl = token_ttl
        self.backoff = backoff
        if source_addresses == "auto":
            needed = math.ceil(count / SOCKETS_PER_SOURCE_ADDRESS)
            self._sources = (
                [f"127.0.0.{i}" for i in range(1, needed + 1)]
                if needed > 1 and _is_loopback(self.mqtt_host) and self.mqtt_host.startswith("127.")
                else []
            )
        else:
            self._sources = list(source_addresses or [])
        self.devices: list[SimulatedDevice] = []
        self.counters: Counter[str] = Counter()
        self.provisioned: ProvisionResult | None = None
        self.connect_seconds: float | None = None
        self._connected = 0
        self._failed = 0
        self._ssl_context: ssl.SSLContext | None = None
        self._connect_tasks: list[asyncio.Task[None]] = []
        self._background = BackgroundTasks("fleet")
        self._started = False
        self._stopped = False

    # ---- identities -----------------------------------------------------------------
    def device_ids(self) -> list[str]:
        """The fleet's device ids: ``{prefix}-{index:05d}`` from ``start_index``."""
        return [f"{self.prefix}-{i:05d}" for i in range(self.start_index, self.start_index + self.count)]

    def device_connection_string(self, device_id: str) -> str:
        """The connection string of ``device_id`` (key derived from the service key)."""
        return device_connection_string(self._cs, device_id)

    async def provision(self) -> ProvisionResult:
        """Create or update every device (bulk API, 100 per call; idempotent)."""
        verify: bool | str = self.ca_file or True
        self.provisioned = await provision_devices(self._cs, self.device_ids(), base_url=self.http_url, verify=verify)
        return self.provisioned

    # ---- lifecycle ------------------------------------------------------------------
    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _make_devices(self) -> None:
        if self.tls:
            self._ssl_context = ssl.create_default_context(cafile=self.ca_file)
            self._ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        sources = self._sources
        for index, device_id in enumerate(self.device_ids()):
            client = DeviceClient(
                device_connection_string(self._cs, device_id),
                host=self.mqtt_host,
                port=self.mqtt_port,
                tls=self.tls,
                ssl_context=self._ssl_context,
                bind_address=sources[index % len(sources)] if sources else None,
                keepalive=self.keepalive,
                token_ttl=self.token_ttl,
                backoff=self.backoff,
            )
            client.on_connection_change(self._on_connection_change)
            behaviour = DeviceBehaviour(client, self.behaviour, seed=self.seed, stats=self.counters)
            self.devices.append(SimulatedDevice(client, behaviour))

    def _on_connection_change(self, connected: bool) -> None:
        self._connected += 1 if connected else -1

    async def start(
        self,
        *,
        wait: bool = True,
        timeout: float | None = None,
        progress: Callable[[FleetStats], None] | None = None,
    ) -> FleetStats:
        """Provision (unless ``provision=False``), then connect every device.

        With ``wait`` (default) return once every device is connected or has failed
        for good (refused credentials); ``progress`` is called about 10 times a second
        meanwhile. Without ``wait`` the devices connect in the background.
        """
        if self._started:
            raise RuntimeError("the fleet was already started")
        self._started = True
        raise_fd_limit(self.count + 256)
        if self.provision_first and self.count:
            await self.provision()
        self._make_devices()
        began = time.perf_counter()
        queue = iter(self.devices)
        workers = min(self.connect_concurrency, max(1, len(self.devices)))
        self._connect_tasks = [
            self._background.spawn(self._connect_worker(queue), name=f"fleet-connect-{i}") for i in range(workers)
        ]
        if self.behaviour.churn_rate > 0:
            self._background.spawn(self._churn(), name="fleet-churn")
        if not wait:
            return self.stats
        try:
            async with asyncio.timeout(timeout):
                while not all(task.done() for task in self._connect_tasks):
                    if progress is not None:
                        progress(self.stats)
                    await asyncio.wait(self._connect_tasks, timeout=0.1)
        finally:
            self.connect_seconds = time.perf_counter() - began
        for task in self._connect_tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if progress is not None:
            progress(self.stats)
        return self.stats

    async def _connect_worker(self, queue: Any) -> None:
        for device in queue:
            if self._stopped:
                return
            try:
                await device.client.connect(retry=True)
            except UnauthorizedError as exc:
                self._failed += 1
                log.warning("%s: %s", device.device_id, exc)
            except IoTFlowsError as exc:  # stop() while connecting
                log.debug("%s: %s", device.device_id, exc)

    async def wait_connected(self, timeout: float | None = None) -> FleetStats:
        """Wait until every device is connected (or failed for good)."""
        async with asyncio.timeout(timeout):
            while self._connected + self._failed < len(self.devices):
                await asyncio.sleep(0.05)
        return self.stats

    async def _churn(self) -> None:
        """Every interval, drop a ``churn_rate`` share of the online devices for a while."""
        cfg = self.behaviour
        round_no = 0
        while not self._stopped:
            await asyncio.sleep(cfg.churn_interval_seconds)
            round_no += 1
            for device in self.devices:
                if device.connected and chance(self.seed, device.device_id, "churn", round_no) < cfg.churn_rate:
                    self._background.spawn(
                        device.behaviour.drop_and_return(cfg.churn_offline_seconds), name=f"churn-{device.device_id}"
                    )

    async def stop(self) -> None:
        """Disconnect every device and stop all background work."""
        if self._stopped:
            return
        self._stopped = True
        await self._background.close()
        await asyncio.gather(*(device.behaviour.close() for device in self.devices), return_exceptions=True)
        for device in self.devices:
            await device.client.disconnect()

    # ---- observation ----------------------------------------------------------------
    @property
    def connected(self) -> int:
        """How many devices are online now."""
        return self._connected

    @property
    def stats(self) -> FleetStats:
        """A snapshot: online/failed devices, reconnects, and the behaviours' counters."""
        return FleetStats(
            total=self.count,
            connected=self._connected,
            failed=self._failed,
            reconnects=sum(device.client.reconnects for device in self.devices),
            counters=dict(self.counters),
            last_error=next((d.client.last_error for d in self.devices if not d.connected and d.client.last_error), None)
            if self._connected < self.count else None,
        )

    def device(self, device_id: str) -> SimulatedDevice:
        """The device called ``device_id``; raises ``KeyError`` if the fleet has none."""
        for device in self.devices:
            if device.device_id == device_id:
                return device
        raise KeyError(device_id)
