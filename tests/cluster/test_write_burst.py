"""``kill -9`` of a node during a burst of reported-property writes: every write the node
acknowledged (a 204 with its ``$version``) is present afterwards, read through the other node.

The test keeps its own ledger of acknowledged writes: each write sets a key of its own
(``w<n>``), so "present" means that key with that value, and the twin's reported
``$version`` is at least the highest acknowledged one.
"""

from __future__ import annotations

import re
import threading

from iot_flows._sas import ConnectionString
from tests.cluster.conftest import NatsServer
from tests.support import Device, HubProcess, Service, wait_until

DEVICES = 6


def _node(db: str, nats: NatsServer, node_id: str) -> HubProcess:
    return HubProcess(db, args=("--bus", nats.url, "--node-id", node_id, "--node-lease-seconds", "2"))


def test_every_acknowledged_reported_write_survives_kill_9(cluster_db: str, nats_server: NatsServer) -> None:
    a = _node(cluster_db, nats_server, "a")
    b = _node(cluster_db, nats_server, "b")
    svc = Service(b.base_url, b.connection_string)
    host = ConnectionString.parse(a.connection_string).host_name
    ledger: dict[str, dict[int, int]] = {}  # device -> {write number: acknowledged $version}
    lock = threading.Lock()
    devices: list[Device] = []
    try:
        for i in range(DEVICES):
            device_id = f"burst-{i}"
            key = svc.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
            dev = Device("127.0.0.1", a.mqtt_port, host, device_id, key)
            assert dev.connect() == 0
            dev.subscribe_iothub()
            devices.append(dev)
            ledger[device_id] = {}

        def burst(dev: Device) -> None:
            n = 0
            while True:
                n += 1
                try:
                    status, topic = dev.patch_reported({f"w{n}": n, "last": n})
                except (TimeoutError, OSError, ValueError, RuntimeError):
                    return  # the node died: this write was never acknowledged
                if status != 204:
                    return
                version = int(re.search(r"\$version=(\d+)", topic).group(1))  # type: ignore[union-attr]
                with lock:
                    ledger[dev.device_id][n] = version

        threads = [threading.Thread(target=burst, args=(dev,), daemon=True) for dev in devices]
        for t in threads:
            t.start()
        wait_until(lambda: all(len(w) >= 20 for w in ledger.values()), timeout=60, interval=0.01)
        a.kill9()  # mid-burst: writes are in flight on every device
        for t in threads:
            t.join(30)
        with lock:
            acknowledged = {d: dict(w) for d, w in ledger.items()}
        assert sum(len(w) for w in acknowledged.values()) >= 20 * DEVICES
        for device_id, writes in acknowledged.items():
            reported = svc.request("GET", f"/twins/{device_id}").json()["properties"]["reported"]
            missing = [n for n in writes if reported.get(f"w{n}") != n]
            assert not missing, f"{device_id}: acknowledged writes {missing[:10]} lost"
            assert reported["$version"] >= max(writes.values()), (device_id, reported["$version"], max(writes.values()))
            # $version grew by one per acknowledged write, in order
            versions = [writes[n] for n in sorted(writes)]
            assert versions == sorted(set(versions)), device_id
    finally:
        for dev in devices:
            dev.drop()
        svc.close()
        if a.proc.poll() is None:
            a.kill9()
        b.terminate()
