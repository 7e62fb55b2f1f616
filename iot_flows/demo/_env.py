"""What the demo runs against: an embedded hub, a simulated fleet, and the fleet's tags.

The hub owns an event loop in a background thread and the fleet runs in its own process
(:mod:`iot_flows.demo._fleet_process`: each holds one socket per device), so Prefect's
blocking moments in the main thread (starting its temporary API server takes ~10 s)
never stall device replies. :meth:`DemoEnvironment.stop` stops both and is safe to call
at any point, also half-way through :meth:`DemoEnvironment.start`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from iot_flows.blocks import HubConnection
from iot_flows.client import HubClient
from iot_flows.demo._fleet_process import FleetProcess
from iot_flows.device import BehaviourConfig, FleetStats
from iot_flows.hub import EmbeddedHub, HubSettings
from iot_flows.jobs import TERMINAL_JOB_STATES

__all__ = ["DEMO_BEHAVIOUR", "DemoEnvironment", "FleetLayout"]

#: Device timings in seconds (the simulator's defaults are closer to real devices).
DEMO_BEHAVIOUR = BehaviourConfig(
    reboot_seconds=1.0, factory_reset_seconds=1.0, fw_wait_seconds=0.5, fw_download_seconds=1.0,
    fw_apply_seconds=1.0, config_apply_seconds=0.5, jitter=0.3,
)  # fmt: skip


@dataclass(frozen=True)
class FleetLayout:
    """Which device sits where: two buildings (halves), and rollout rings inside each.

    Devices are ``{prefix}-{i:05d}``; every group is a range of ids, so the tags are set
    with a handful of twin-update jobs (fan-out in the hub) instead of one call per device.
    Per building: the first 0.5 % are ``canary``, the next 4.5 % ``wave1``, the rest ``wave2``.
    """

    count: int
    prefix: str = "demo"

    def device_id(self, index: int) -> str:
        """The id of device number ``index``: ``{prefix}-{index:05d}``."""
        return f"{self.prefix}-{index:05d}"

    @property
    def half(self) -> int:
        """Devices per building (the fleet's first half is building 43, the second 44)."""
        return self.count // 2

    @property
    def canary_per_building(self) -> int:
        """Canary devices per building: 0.5 % of the fleet, at least one."""
        return max(1, round(self.count * 0.005))

    @property
    def wave1_per_building(self) -> int:
        """``wave1`` devices per building: 4.5 % of the fleet, at least one."""
        return max(1, round(self.count * 0.045))

    def _range(self, start: int, stop: int | None) -> str:
        low = f"deviceId >= '{self.device_id(start)}'"
        return low if stop is None else f"({low} AND deviceId < '{self.device_id(stop)}')"

    def _in_both(self, start: int, stop: int | None) -> str:
        first = self._range(start, self.half if stop is None else stop)
        second = self._range(self.half + start, None if stop is None else self.half + stop)
        return f"{first} OR {second}"

    def tag_jobs(self) -> list[tuple[str, dict[str, Any]]]:
        """``(query condition, tags)`` of each tagging job."""
        c, w = self.canary_per_building, self.canary_per_building + self.wave1_per_building
        return [
            (self._range(0, self.half), {"building": "43"}),
            (self._range(self.half, None), {"building": "44"}),
            (self._in_both(0, c), {"ring": "canary"}),
            (self._in_both(c, w), {"ring": "wave1"}),
            (self._in_both(w, None), {"ring": "wave2"}),
        ]

    def size(self, building: str | None = None, rings: tuple[str, ...] = ()) -> int:
        """How many devices a building and/or a set of rings holds."""
        per = {"canary": self.canary_per_building, "wave1": self.wave1_per_building}
        halves = {"43": self.half, "44": self.count - self.half}
        buildings = [building] if building else ["43", "44"]
        if not rings:
            return sum(halves[b] for b in buildings)
        total = 0
        for b in buildings:
            for ring in rings:
                total += per[ring] if ring in per else halves[b] - sum(per.values())
        return total


class DemoEnvironment:
    """An embedded hub (SQLite in a temporary folder, free ports) and a simulated fleet."""

    def __init__(self, layout: FleetLayout, *, behaviour: BehaviourConfig = DEMO_BEHAVIOUR, seed: int = 7) -> None:
        self.layout = layout
        self.behaviour = behaviour
        self.seed = seed
        self.folder: str | None = None
        self.hub: EmbeddedHub | None = None
        self.fleet: FleetProcess | None = None

    # ---- start --------------------------------------------------------------------------
    def start_hub(self) -> EmbeddedHub:
        """Start an embedded hub on free ports with SQLite in a new temporary folder; return it."""
        self.folder = tempfile.mkdtemp(prefix="iot-flows-demo-")
        settings = HubSettings(mqtt_port=0, http_port=0, db=os.path.join(self.folder, "hub.db"))
        self.hub = EmbeddedHub(settings).start()
        return self.hub

    @property
    def connection(self) -> HubConnection:
        """The one hub every flow of the demo talks to (passed explicitly, never the default)."""
        assert self.hub is not None
        return HubConnection(connection_string=SecretStr(self.hub.connection_string()), base_url=self.hub.base_url)

    def start_fleet(self) -> None:
        """Provision and connect the fleet in its own process; :meth:`wait_fleet` waits for it."""
        assert self.hub is not None
        self.fleet = FleetProcess(
            self.hub.connection_string(), count=self.layout.count, prefix=self.layout.prefix,
            mqtt_host="127.0.0.1", mqtt_port=self.hub.hub.mqtt_port, http_url=self.hub.base_url, tls=False,
            behaviour=self.behaviour, seed=self.seed,
        )  # fmt: skip

    async def wait_fleet(self) -> FleetStats:
        """Wait until the fleet process reports every device connected (or failed); return its stats."""
        assert self.fleet is not None
        return await self.fleet.started()

    async def tag(self, poll: float = 0.1, timeout: float = 120.0) -> int:
        """Tag building and ring with twin-update jobs (one after the other); returns jobs run."""
        assert self.hub is not None
        async with HubClient(self.hub.connection_string(), base_url=self.hub.base_url) as client:
            for n, (condition, tags) in enumerate(self.layout.tag_jobs()):
                job_id = f"demo-tags-{n}-{int(time.time() * 1000)}"
                await client.create_job(job_id, {
                    "type": "scheduleUpdateTwin", "queryCondition": condition,
                    "updateTwin": {"etag": "*", "tags": tags}, "maxExecutionTimeInSeconds": int(timeout),
                })  # fmt: skip
                deadline = time.monotonic() + timeout
                while (job := await client.get_job(job_id))["status"] not in TERMINAL_JOB_STATES:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"tagging job {job_id} still {job['status']} after {timeout:.0f} s")
                    await asyncio.sleep(poll)
                stats = job.get("deviceJobStatistics") or {}
                if job["status"] != "completed" or stats.get("failedCount"):
                    raise RuntimeError(f"tagging job {job_id} ({tags}) ended {job['status']}: {stats}")
        return len(self.layout.tag_jobs())

    # ---- stop ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the fleet, then the hub, then remove the temporary folder (idempotent)."""
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None
        if self.hub is not None:
            self.hub.stop()
            self.hub = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
