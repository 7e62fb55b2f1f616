"""Degraded storage (issue 12 item 6): a locked database or a full disk is a 503, not a crash.

While another process holds an exclusive lock on the database (SQLite ``BEGIN
EXCLUSIVE``; PostgreSQL ``LOCK TABLE ... ACCESS EXCLUSIVE``), while its connections are
terminated, or while the disk is full (a 1 MB tmpfs; needs root), the hub answers REST
writes with 503 and IoT Hub's error body (503001 ServiceUnavailable, retryable), answers
a device's reported-properties PATCH over MQTT with status 503 (the device stays
connected), keeps serving what it can, and serves writes again by itself once the lock
is released or space is freed; the data is intact afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.support import Device, Service

API = "api-version=2021-04-12"


class Setup:
    def __init__(self, hub: EmbeddedHub, service: Service, device: Device, db: str) -> None:
        self.hub, self.service, self.device, self.db = hub, service, device, db

    def write_desired(self, value: Any) -> httpx.Response:
        return self.service.request("PATCH", f"/twins/{self.device.device_id}?{API}",
                                    json_body={"properties": {"desired": {"probe": value}}})

    def twin(self) -> dict[str, Any]:
        r = self.service.request("GET", f"/twins/{self.device.device_id}?{API}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def _hub_with_device(db: str) -> Iterator[Setup]:
    with EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=db)) as hub:
        service = Service(hub.base_url, hub.connection_string())
        record = service.create_device("degraded-1")
        key = record["authentication"]["symmetricKey"]["primaryKey"]
        device = Device("127.0.0.1", hub.hub.mqtt_port, hub.hub.settings.hostname, "degraded-1", key)
        assert device.connect() == 0
        device.subscribe_iothub()
        try:
            yield Setup(hub, service, device, db)
        finally:
            device.disconnect()
            service.close()


def assert_unavailable(r: httpx.Response) -> None:
    """503 with IoT Hub's error body: 503001 ServiceUnavailable."""
    assert r.status_code == 503, r.text
    assert r.headers["iothub-errorcode"] == "ServiceUnavailable"
    body = json.loads(r.json()["Message"])
    assert body["errorCode"] == 503001 and "unavailable" in body["message"].lower(), body


def assert_degraded_then_resumes(s: Setup, release: Any, label: str) -> None:
    """The checks common to every degradation; ``release`` ends it."""
    assert_unavailable(s.write_desired(f"{label}-refused"))
    status, topic = s.device.patch_reported({"probe": f"{label}-refused"})
    assert status == 503, topic
    assert s.device.client.is_connected()
    assert s.hub.hub.mqtt.connection_count == 1
    release()
    r = s.write_desired(f"{label}-accepted")  # no restart, no retry loop: serves again at once
    assert r.status_code == 200, r.text
    status, topic = s.device.patch_reported({"probe": f"{label}-accepted"})
    assert status == 204, topic
    twin = s.twin()
    assert twin["properties"]["desired"]["probe"] == f"{label}-accepted"
    assert twin["properties"]["reported"]["probe"] == f"{label}-accepted"


# ---- SQLite -----------------------------------------------------------------------------
_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


@pytest.fixture
def sqlite_setup(tmp_path: Path) -> Iterator[Setup]:
    yield from _hub_with_device(str(tmp_path / "hub.db"))


def test_sqlite_locked_by_another_process_is_503_and_resumes_when_released(sqlite_setup: Setup) -> None:
    s = sqlite_setup
    record = s.service.create_device("degraded-2")

    def late_device() -> Device:
        return Device("127.0.0.1", s.hub.hub.mqtt_port, s.hub.hub.settings.hostname, "degraded-2",
                      record["authentication"]["symmetricKey"]["primaryKey"], clean_session=False)

    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, s.db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"  # type: ignore[union-attr]
        assert s.twin()["deviceId"] == "degraded-1"  # WAL: reads go on while writes wait
        late = late_device()
        assert late.connect(timeout=20) == 136  # CONNACK 3 (server unavailable, paho: 136): the device retries later
        late.disconnect()

        def release() -> None:
            locker.communicate("\n", timeout=10)
            assert locker.returncode == 0

        assert_degraded_then_resumes(s, release, "locked")
        late = late_device()
        assert late.connect(timeout=20) == 0
        late.disconnect()
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
        for stream in (locker.stdin, locker.stdout):
            if stream is not None and not stream.closed:
                stream.close()
    with sqlite3.connect(s.db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (root only; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is simulated with a 1 MB tmpfs: needs root (mount -t tmpfs)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: the disk is full
    finally:
        os.close(fd)


def test_sqlite_disk_full_is_503_and_resumes_when_space_is_freed(small_disk: Path) -> None:
    for s in _hub_with_device(str(small_disk / "hub.db")):
        filler = small_disk / "filler"
        _fill(filler)
        def big(i: int) -> dict[str, str]:  # ~24 KB: soon more than the WAL holds without growing
            return {f"k{j}": f"{i}-" + "x" * 3000 for j in range(8)}

        statuses = [s.write_desired(big(i)).status_code for i in range(8)]
        assert 503 in statuses and set(statuses) <= {200, 503}, statuses
        r = s.write_desired(big(99))
        assert_unavailable(r)
        status, topic = s.device.patch_reported({"probe": big(100)})
        assert status == 503, topic
        assert s.device.client.is_connected()
        filler.unlink()
        r = s.write_desired("full-accepted")
        assert r.status_code == 200, r.text
        status, topic = s.device.patch_reported({"probe": "full-accepted"})
        assert status == 204, topic
        twin = s.twin()
        assert twin["properties"]["desired"]["probe"] == "full-accepted"
        assert twin["properties"]["reported"]["probe"] == "full-accepted"
        with sqlite3.connect(s.db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---- PostgreSQL ---------------------------------------------------------------------------
@pytest.fixture
def pg_setup(pg_cluster: Any) -> Iterator[Setup]:
    yield from _hub_with_device(pg_cluster.create_database(f"degraded_{os.getpid()}_{time.monotonic_ns()}"))


class PgSession:
    """Another PostgreSQL session (its own event loop in this thread)."""

    def __init__(self, url: str) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.conn = self.run(asyncpg.connect(url))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def execute(self, sql: str) -> Any:
        return self.run(self.conn.execute(sql))

    def close(self) -> None:
        self.run(self.conn.close())
        self.loop.close()


def test_postgresql_table_locked_by_another_session_is_503_and_resumes(pg_setup: Setup) -> None:
    s = pg_setup
    other = PgSession(s.db)
    try:
        other.execute("BEGIN")
        other.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        assert_unavailable(s.service.request("GET", f"/twins/{s.device.device_id}?{API}"))  # reads wait too
        assert_degraded_then_resumes(s, lambda: other.execute("COMMIT"), "pg-locked")
    finally:
        other.close()


def test_postgresql_connections_refused_then_back_is_503_and_resumes(pg_setup: Setup) -> None:
    s = pg_setup
    dbname = s.db.rsplit("/", 1)[1]
    admin = PgSession(s.db.rsplit("/", 1)[0] + "/postgres")
    try:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'")
        assert_degraded_then_resumes(
            s, lambda: admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true'), "pg-refused")
    finally:
        admin.close()


def test_a_method_reaches_a_device_whose_reported_patch_waits_on_a_row_lock(pg_setup: Setup) -> None:
    """What the hub sends a device while that device's own publish is being handled is held
    to leave in one write with the PUBACK, but never longer than one loop iteration: a
    direct method request must reach the device while its twin write is stuck on a lock
    (up to ``lock_timeout``), not after the twin response."""
    s = pg_setup
    rid = s.device.next_rid()
    seen_at_request: list[list[str]] = []

    def answer(name: str, payload: Any) -> tuple[int, Any]:
        seen_at_request.append([m.topic for m in list(s.device.messages.queue) if f"$rid={rid}" in m.topic])
        return 200, {"method": name}

    s.device.serve_methods(answer)
    other = PgSession(s.db)
    try:
        other.execute("BEGIN")
        other.execute(f"SELECT 1 FROM devices WHERE device_id = '{s.device.device_id}' FOR UPDATE")
        s.device.client.publish(f"$iothub/twin/PATCH/properties/reported/?$rid={rid}", b'{"stuck": true}', qos=1)
        time.sleep(0.5)  # the hub is now inside that publish, its UPDATE waiting on the row lock
        r = s.service.request("POST", f"/twins/{s.device.device_id}/methods?{API}",
                              json_body={"methodName": "ping", "payload": {}, "responseTimeoutInSeconds": 20})  # fmt: skip
        assert r.status_code == 200 and r.json()["payload"] == {"method": "ping"}, r.text
        assert seen_at_request == [[]], f"the method request waited for the twin write: {seen_at_request}"
        other.execute("COMMIT")
        s.device.wait_message(lambda m: m.topic.startswith("$iothub/twin/res/") and f"$rid={rid}" in m.topic)
    finally:
        other.close()
