"""``iot-flows hub serve`` as a real process: start-up, owner key, SIGTERM, and kill -9 durability."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import Device, Service, free_port, wait_until

CLI = [sys.executable, "-m", "iot_flows.cli"]


class HubProcess:
    def __init__(self, db: Path, env: dict[str, str] | None = None) -> None:
        self.mqtt_port, self.http_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [*CLI, "hub", "serve", "--db", str(db), "--mqtt-port", str(self.mqtt_port), "--http-port", str(self.http_port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"hub exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("HostName="):
                self.connection_string = line.strip()
                break
        wait_until(lambda: httpx.get(f"{self.base_url}/healthz").status_code == 200, timeout=10)
        self.output = "".join(lines)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]
        return code


def test_owner_key_from_env_and_clean_sigterm(tmp_path):
    key = base64.b64encode(os.urandom(32)).decode()
    hub = HubProcess(tmp_path / "hub.db", env={"IOT_FLOWS_HUB_OWNER_KEY": key})
    assert hub.connection_string == f"HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey={key}"
    assert re.search(r"MQTT\s+: 127\.0\.0\.1:\d+", hub.output)
    dev_record = Service(hub.base_url, hub.connection_string).create_device("sigterm-dev")
    dev = Device("127.0.0.1", hub.mqtt_port, "localhost", "sigterm-dev", dev_record["authentication"]["symmetricKey"]["primaryKey"])
    assert dev.connect() == 0
    assert hub.terminate() == 0
    assert dev.disconnected.wait(5), "shutdown must close device connections"
    dev.client.loop_stop()


def test_generated_owner_key_is_stored_and_reused(tmp_path):
    db = tmp_path / "hub.db"
    first = HubProcess(db)
    cs = first.connection_string
    assert first.terminate() == 0
    second = HubProcess(db)
    assert second.connection_string == cs
    assert second.terminate() == 0


def test_acknowledged_writes_survive_kill_9(tmp_path):
    db = tmp_path / "hub.db"
    hub = HubProcess(db)
    svc = Service(hub.base_url, hub.connection_string)
    created = [svc.create_device(f"dur-{i}") for i in range(20)]
    for i in range(20):
        r = svc.request("PATCH", f"/twins/dur-{i}", json_body={"tags": {"n": i}, "properties": {"desired": {"d": i}}})
        assert r.status_code == 200
    key = created[0]["authentication"]["symmetricKey"]["primaryKey"]
    dev = Device("127.0.0.1", hub.mqtt_port, "localhost", "dur-0", key)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    acked = 0
    for i in range(50):
        status, _ = dev.patch_reported({"seq": i, f"k{i}": i})
        assert status == 204
        acked = i
    info = dev.client.publish("devices/dur-0/messages/events/", b"x", qos=1)
    info.wait_for_publish(5)
    hub.kill9()  # no shutdown, no checkpoint
    dev.client.loop_stop()
    svc.close()

    again = HubProcess(db)
    svc = Service(again.base_url, again.connection_string)
    assert again.connection_string == hub.connection_string
    for i in range(20):
        twin = svc.request("GET", f"/twins/dur-{i}").json()
        assert twin["tags"]["n"] == i and twin["properties"]["desired"]["d"] == i
        assert twin["connectionState"] == "Disconnected"
    reported = svc.request("GET", "/twins/dur-0").json()["properties"]["reported"]
    assert reported["seq"] == acked and all(reported[f"k{i}"] == i for i in range(50))
    svc.close()
    assert again.terminate() == 0
