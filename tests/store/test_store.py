"""The store seam: backend choice, schema versions, start-up errors and a lost PostgreSQL.

Runs on both backends where a backend is involved (``backend`` fixture); the start-up
and outage tests use PostgreSQL servers of their own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from typing import Any

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.store import HubStore, StoreConfigError, open_store
from iot_flows.store._pgschema import PG_MIGRATIONS
from iot_flows.store._schema import DDL, JOBS_DDL, SQLITE_MIGRATIONS
from tests.pgcluster import PgCluster
from tests.support import CLI, Device, Service, error_code, free_port, wait_until


def _serve(db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "hub", "serve", "--db", db, "--mqtt-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_unreachable_postgresql_is_one_line_and_exit_2() -> None:
    port = free_port()  # nothing listens there
    result = _serve(f"postgresql://postgres@127.0.0.1:{port}/fleet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"PostgreSQL at 127.0.0.1:{port}/fleet is unreachable" in lines[0]


def test_unsupported_db_url_is_one_line_and_exit_2() -> None:
    result = _serve("mysql://root@127.0.0.1/fleet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsupported scheme 'mysql'" in lines[0], result.stderr


def test_sqlite_path_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Any) -> None:
    # Found by a newcomer: a file where the folder should be printed a 60-line traceback.
    (tmp_path / "afile").write_text("x")
    not_a_db = tmp_path / "not-a-db.db"
    not_a_db.write_bytes(b"this is not a SQLite database" * 100)
    # and a folder that does not exist was created, whole (a typo started an empty registry)
    missing = tmp_path / "no" / "such" / "hub.db"
    for db, why in ((tmp_path / "afile" / "hub.db", "is a file, not a folder"), (not_a_db, "not a database"),
                    (missing, f"the folder '{missing.parent}' does not exist (create it first: mkdir -p")):  # fmt: skip
        result = _serve(str(db))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"--db '{db}'" in lines[0] and why in lines[0], result.stderr
    assert not (tmp_path / "no").exists()


def test_a_port_in_use_is_one_line_and_exit_2() -> None:
    # Found by a newcomer: `hub serve` with 1883 taken printed a ~100-line traceback.
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for option, what in (("--mqtt-port", "MQTT"), ("--http-port", "REST")):
            ports = {"--mqtt-port": "0", "--http-port": "0", option: str(port)}
            result = subprocess.run([*CLI, "hub", "serve", "--db", ":memory:", *(x for kv in ports.items() for x in kv)],
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert f"cannot listen for {what} on 127.0.0.1:{port}: address already in use" in lines[0], lines
            assert f"choose another port with {option}" in lines[0], lines


async def test_open_store_picks_the_backend(tmp_path: Any, make_db: Any, backend: str) -> None:
    store = await open_store(make_db())
    try:
        assert isinstance(store, HubStore) and store.dialect == backend
        steps = SQLITE_MIGRATIONS if backend == "sqlite" else PG_MIGRATIONS
        assert getattr(store, "schema_version") == len(steps)
    finally:
        await store.close()
    relative = await open_store(f"sqlite:///{tmp_path}/x.db")  # sqlite:////abs/path
    assert relative.dialect == "sqlite" and relative.location == f"{tmp_path}/x.db"
    await relative.close()
    with pytest.raises(StoreConfigError):
        await open_store("redis://localhost/0")


async def test_schema_steps_run_once_and_old_sqlite_files_are_adopted(tmp_path: Any, make_db: Any) -> None:
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript(DDL + JOBS_DDL)  # a store written before schema_version existed
    conn.execute("INSERT INTO meta VALUES ('policy_keys', '{}')")
    conn.commit()
    conn.close()
    for db in (str(old), make_db()):
        for _ in range(2):
            store = await open_store(db)
            try:
                steps = SQLITE_MIGRATIONS if store.dialect == "sqlite" else PG_MIGRATIONS
                assert getattr(store, "schema_version") == len(steps)
            finally:
                await store.close()
    conn = sqlite3.connect(old)
    assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
        (v,) for v in range(1, len(SQLITE_MIGRATIONS) + 1)
    ]
    assert conn.execute("SELECT value FROM meta").fetchall() == [("{}",)]
    conn.close()


async def test_duplicate_ids_are_domain_errors_inside_a_transaction(make_db: Any) -> None:
    from iot_flows._exceptions import DeviceAlreadyExistsError
    from iot_flows.store import DeviceRecord

    store = await open_store(make_db())
    try:
        record = DeviceRecord(device_id="dup", generation_id="1", device_etag="e", status_updated_time="t")
        await store.insert(record)
        async with store.transaction():
            with pytest.raises(DeviceAlreadyExistsError):
                await store.insert(record)
            other = DeviceRecord(device_id="dup2", generation_id="1", device_etag="e", status_updated_time="t")
            await store.insert(other)  # the transaction is still usable
        assert [r.device_id for r in await store.list()] == ["dup", "dup2"]
    finally:
        await store.close()


def test_lost_postgresql_answers_503_and_recovers() -> None:
    with PgCluster() as pg:
        url = pg.create_database("outage")
        with EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=url)) as hub:
            svc = Service(hub.base_url, hub.connection_string())
            record = svc.create_device("outage-dev")
            key = record["authentication"]["symmetricKey"]["primaryKey"]
            dev = Device("127.0.0.1", hub.hub.mqtt_port, hub.hub.settings.hostname, "outage-dev", key)
            assert dev.connect() == 0
            dev.subscribe_iothub()
            pg.stop_server()
            r = svc.request("GET", "/twins/outage-dev")
            assert r.status_code == 503, r.text
            assert error_code(r) == 503001 and r.headers["iothub-errorcode"] == "ServiceUnavailable"
            assert not dev.disconnected.is_set(), "devices stay connected while the database is away"
            pg.start_server()
            r = wait_until(lambda: (x := svc.request("GET", "/twins/outage-dev")).status_code == 200 and x, timeout=30)
            assert r.json()["deviceId"] == "outage-dev"
            status, _ = dev.patch_reported({"back": True})
            assert status == 204
            twin = svc.request("GET", "/twins/outage-dev").json()
            assert twin["properties"]["reported"]["back"] is True
            dev.disconnect()
            svc.close()


def test_reported_writes_are_durable_and_readable_at_once(embedded_hub: EmbeddedHub, service: Service, devices: Any) -> None:
    # read-your-writes: each acknowledged write is visible to the very next query
    dev = devices()
    for i in range(10):
        status, _ = dev.patch_reported({"n": i})
        assert status == 204
        got = service.request("POST", "/devices/query", json_body={
            "query": f"SELECT * FROM devices WHERE deviceId = '{dev.device_id}' AND properties.reported.n = {i}"}).json()
        assert [t["deviceId"] for t in got] == [dev.device_id]


async def test_nodes_starting_together_on_a_new_database_agree_on_the_policy_keys(make_db: Any, backend: str) -> None:
    # Found by CI: two nodes started at once on an empty PostgreSQL each stored its own
    # policy keys (last writer won) and kept its own in memory: 401002 through the balancer.
    db = make_db()
    stores = [await open_store(db), await open_store(db)]
    try:
        first, second = await asyncio.gather(
            stores[0].set_meta_if_absent("policy_keys", "from-a"), stores[1].set_meta_if_absent("policy_keys", "from-b")
        )
        assert first == second and first in ("from-a", "from-b")
        assert await stores[0].set_meta_if_absent("policy_keys", "later") == first
        assert await stores[1].get_meta("policy_keys") == first
    finally:
        for store in stores:
            await store.close()
