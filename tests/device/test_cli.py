"""``iot-flows fleet simulate`` as a real process against the session hub."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from typer.testing import CliRunner

from iot_flows.cli._main import app
from iot_flows.hub._embedded import EmbeddedHub
from tests.device.conftest import unique
from tests.support import Service, wait_until

ROOT = Path(__file__).resolve().parents[2]


def states(service: Service, ids: list[str]) -> set[str]:
    return {service.request("GET", f"/devices/{d}").json().get("connectionState", "missing") for d in ids}


def test_fleet_simulate_provisions_connects_and_stops_on_ctrl_c(embedded_hub: EmbeddedHub, service: Service) -> None:
    prefix = unique("cli")
    ids = [f"{prefix}-{i:05d}" for i in range(5)]
    cmd = [
        sys.executable, "-c", "from iot_flows.cli._main import main; main()", "fleet", "simulate",
        "--count", "5", "--prefix", prefix, "--hub", embedded_hub.connection_string(),
        "--mqtt-host", "127.0.0.1", "--mqtt-port", str(embedded_hub.hub.mqtt_port),
        "--http-url", embedded_hub.base_url, "--seed", "3", "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # The hub shows a device Connected at CONNECT, before the simulator has subscribed and
    # fetched the twin: wait for the simulator's own "connected" line before Ctrl-C.
    err_chunks: list[bytes] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: err_chunks.extend(iter(proc.stderr.readline, b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: states(service, ids) == {"Connected"}, timeout=30, interval=0.1)
        wait_until(lambda: b"devices connected" in b"".join(err_chunks), timeout=30, interval=0.1)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        out = proc.stdout.read() if proc.stdout is not None else b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = b"".join(err_chunks)
    assert proc.returncode == 0, err.decode()
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["total"] == 5 and stats["connected_at_stop"] == 5 and stats["failed"] == 0
    assert "5/5 devices connected" in err.decode()
    wait_until(lambda: states(service, ids) == {"Disconnected"}, timeout=10, interval=0.1)


def test_fleet_simulate_rejects_a_device_connection_string() -> None:
    result = CliRunner().invoke(app, ["fleet", "simulate", "--count", "1", "--hub", "HostName=h;DeviceId=d;SharedAccessKey=a2V5"])
    assert result.exit_code == 2
    assert "service connection string" in result.output
