"""Fixtures for interop tests with the official Azure IoT Node device SDK.

A separate hub runs for these tests with TLS on (a CA generated per session, see
``tests/tlsutil.py``): MQTT over TLS on a free port, REST over HTTPS. The Node device
script (``node/device.js``) runs as a subprocess and reports each step as a JSON line.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.support import Service
from tests.tlsutil import TestPki, make_test_pki

NODE_DIR = Path(__file__).parent / "node"
DEVICE_SCRIPT = NODE_DIR / "device.js"
SDK_PACKAGES = ("azure-iot-device", "azure-iot-device-mqtt")
WAIT = 30.0  # generous per-step timeout (seconds)


@pytest.fixture(scope="session")
def node_bin() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("`node` is not on PATH: interop tests need Node.js (and `npm install` in tests/interop/node)")
    for package in SDK_PACKAGES:
        if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
            pytest.skip(
                f"tests/interop/node/node_modules/{package} is missing: run `npm install` in tests/interop/node "
                "(./scripts/test does this)"
            )
    return node


@pytest.fixture(scope="session")
def interop_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("interop-pki"))


@pytest.fixture(scope="module")
def tls_hub(node_bin: str, interop_pki: TestPki, make_db: Callable[[], str]) -> Iterator[EmbeddedHub]:
    db = make_db()
    settings = HubSettings(
        mqtt_port=0,
        http_port=0,
        mqtts_port=0,
        db=str(db),
        tls_cert=str(interop_pki.server_cert),
        tls_key=str(interop_pki.server_key),
    )  # the default HostName: what `iot-flows hub serve` prints and firmware gets
    with EmbeddedHub(settings) as hub:
        assert hub.hub.mqtts_port, "the hub did not open an MQTT/TLS listener"
        assert hub.base_url.startswith("https://"), hub.base_url
        yield hub


@pytest.fixture(scope="module")
def tls_service(tls_hub: EmbeddedHub, interop_pki: TestPki) -> Iterator[Service]:
    # Verify the hub's certificate against the test CA only (no system trust store).
    verify = ssl.create_default_context(cafile=str(interop_pki.ca_cert))
    svc = Service(tls_hub.base_url, tls_hub.connection_string(), verify=verify)
    yield svc
    svc.close()


class NodeDevice:
    """``node device.js`` in a subprocess; stdout JSON lines land in a queue."""

    def __init__(self, node: str, env: dict[str, str]) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        self._raw_stdout: list[str] = []
        self.proc = subprocess.Popen(
            [node, str(DEVICE_SCRIPT)],
            cwd=str(NODE_DIR),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._raw_stdout.append(line)
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "line": line}
            self.events.put(event)

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def diagnostics(self) -> str:
        return (
            f"\n--- events so far: {json.dumps(self.seen)}"
            f"\n--- exit code: {self.proc.poll()}"
            f"\n--- node stderr:\n{self.stderr or '(empty)'}"
        )

    def wait_event(
        self, name: str, predicate: Callable[[dict[str, Any]], bool] = lambda e: True, timeout: float = WAIT
    ) -> dict[str, Any]:
        """The next event named ``name`` that satisfies ``predicate``; fail on an ``error``/``timeout`` event."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {name!r} event from the Node SDK device within {timeout:.0f} s{self.diagnostics()}")
            try:
                event = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty() and not self._readers[0].is_alive():
                    pytest.fail(f"the Node SDK device exited before a {name!r} event{self.diagnostics()}")
                continue
            self.seen.append(event)
            if event.get("event") == name and predicate(event):
                return event
            if event.get("event") in ("error", "timeout") and name not in ("error", "timeout"):
                pytest.fail(f"the Node SDK device reported {event} while waiting for {name!r}{self.diagnostics()}")

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the Node SDK device did not exit within {timeout:.0f} s{self.diagnostics()}")
        for reader in self._readers:
            reader.join(5)
        while not self.events.empty():
            self.seen.append(self.events.get_nowait())
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        finally:
            for reader in self._readers:
                reader.join(5)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def node_device(node_bin: str, tls_hub: EmbeddedHub, interop_pki: TestPki) -> Iterator[Callable[..., NodeDevice]]:
    """Factory: ``node_device(connection_string, mode="full", **extra_env)`` starts device.js."""
    started: list[NodeDevice] = []

    def start(connection_string: str, mode: str = "full", **extra: str) -> NodeDevice:
        # A minimal environment: no NODE_EXTRA_CA_CERTS/NODE_OPTIONS/proxies from the developer's shell.
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
        }
        env.update(
            INTEROP_CONNECTION_STRING=connection_string,
            INTEROP_CA_FILE=str(interop_pki.ca_cert),
            INTEROP_MQTTS_PORT=str(tls_hub.hub.mqtts_port),
            INTEROP_MODE=mode,
            INTEROP_TIMEOUT_MS=str(int(WAIT * 2 * 1000)),
        )
        if os.environ.get("INTEROP_DEBUG"):
            env["DEBUG"] = os.environ["INTEROP_DEBUG"]  # e.g. azure-iot*,mqttjs* (to stderr)
        env.update(extra)
        device = NodeDevice(node_bin, env)
        started.append(device)
        return device

    yield start
    for device in started:
        device.close()
