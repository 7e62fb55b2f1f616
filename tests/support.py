"""Test helpers: a small SAS-signed REST caller and a paho-based device, both real sockets.

These deliberately do not use iot_flows' own client libraries, so hub tests do not
depend on the code they would otherwise be testing against.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import paho.mqtt.client as mqtt

from iot_flows._sas import ConnectionString, generate_sas_token


class Service:
    """Signs each request with the policy in the connection string."""

    def __init__(self, base_url: str, connection_string: str, verify: Any = True) -> None:
        self.cs = ConnectionString.parse(connection_string)
        self.http = httpx.Client(base_url=base_url, verify=verify, timeout=60)

    def request(self, method: str, path: str, *, json_body: Any = None, headers: dict[str, str] | None = None,
                token: str | None = None, **kwargs: Any) -> httpx.Response:
        hdrs = {"Authorization": token if token is not None else self.cs.token()}
        hdrs.update(headers or {})
        sep = "&" if "?" in path else "?"
        return self.http.request(method, f"{path}{sep}api-version=2021-04-12", json=json_body, headers=hdrs, **kwargs)

    def create_device(self, device_id: str | None = None, **body: Any) -> dict[str, Any]:
        device_id = device_id or f"dev-{uuid.uuid4().hex[:12]}"
        r = self.request("PUT", f"/devices/{device_id}", json_body={"deviceId": device_id, **body})
        assert r.status_code == 200, r.text
        return r.json()

    def close(self) -> None:
        self.http.close()


def error_code(response: httpx.Response) -> int | None:
    """The numeric errorCode inside an IoT Hub error body (JSON string in ``Message``)."""
    message = response.json()["Message"]
    if message.startswith("ErrorCode:"):
        return None
    return int(json.loads(message)["errorCode"])


@dataclass
class Received:
    topic: str
    payload: bytes


class Device:
    """A paho MQTT 3.1.1 device speaking IoT Hub's dialect by hand."""

    def __init__(self, host: str, port: int, hostname: str, device_id: str, key: str | None, *,
                 clean_session: bool = False, keepalive: int = 60, password: str | None = None,
                 username: str | None = None, ca_file: str | None = None, token_ttl: int = 3600) -> None:
        self.device_id = device_id
        self.host, self.port = host, port
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        if password is None and key is not None:
            password = generate_sas_token(f"{hostname}/devices/{device_id}", key, ttl=token_ttl)
        self.client.username_pw_set(username if username is not None else f"{hostname}/{device_id}/?api-version=2021-04-12", password)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLSv1_2)
        self.keepalive = keepalive
        self.messages: "queue.Queue[Received]" = queue.Queue()
        self.connack: int | None = None
        self.session_present: bool | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.method_requests: "queue.Queue[Received]" = queue.Queue()
        self._serving_methods = False
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._rid = 0
        self._stopped = False
        self._method_thread: threading.Thread | None = None

    def _on_message(self, client: Any, userdata: Any, m: Any) -> None:
        if self._serving_methods and m.topic.startswith("$iothub/methods/POST/"):
            self.method_requests.put(Received(m.topic, m.payload))
        else:
            self.messages.put(Received(m.topic, m.payload))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connack = 0 if not rc.is_failure else int(rc.value)
        self.session_present = bool(flags.session_present)
        if not rc.is_failure:
            self.connected.set()
        else:
            self.disconnected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        self.disconnected.set()

    def connect(self, timeout: float = 10) -> int | None:
        """Connect and wait for CONNACK or disconnect; return the CONNACK code (0 = accepted)."""
        self.disconnected.clear()
        self.client.connect(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self.connected.is_set() or self.disconnected.is_set()):
            time.sleep(0.005)
        return self.connack

    def subscribe(self, *topics: str, qos: int = 1) -> list[int]:
        """Subscribe and wait for the SUBACK; return granted codes (128 = refused)."""
        done = threading.Event()
        granted: list[int] = []

        def on_subscribe(c: Any, u: Any, mid: Any, codes: Any, props: Any = None) -> None:
            granted.extend(int(rc.value) for rc in codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe([(t, qos) for t in topics])
        assert done.wait(10), "no SUBACK"
        return granted

    def subscribe_iothub(self) -> None:
        assert self.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#",
                              "$iothub/methods/POST/#") == [1, 1, 1]

    def wait_message(self, predicate: Callable[[Received], bool] = lambda m: True, timeout: float = 10) -> Received:
        deadline = time.monotonic() + timeout
        skipped: list[Received] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no matching message")
                try:
                    msg = self.messages.get(timeout=remaining)
                except queue.Empty:
                    raise TimeoutError("no matching message") from None
                if predicate(msg):
                    return msg
                skipped.append(msg)
        finally:
            for msg in skipped:
                self.messages.put(msg)

    def next_rid(self) -> str:
        self._rid += 1
        return f"{uuid.uuid4()}-{self._rid}"

    def twin_request(self, topic_prefix: str, body: bytes, qos: int = 1, topic_suffix: str = "") -> Received:
        rid = self.next_rid()
        self.client.publish(f"{topic_prefix}?$rid={rid}{topic_suffix}", body, qos=qos)
        return self.wait_message(lambda m: m.topic.startswith("$iothub/twin/res/") and f"$rid={rid}" in m.topic)

    def get_twin(self) -> tuple[int, Any]:
        msg = self.twin_request("$iothub/twin/GET/", b" ")
        status = int(msg.topic.split("/")[3])
        return status, json.loads(msg.payload) if msg.payload else None

    def patch_reported(self, patch: Any, raw: bytes | None = None, topic_suffix: str = "") -> tuple[int, str]:
        body = raw if raw is not None else json.dumps(patch).encode()
        msg = self.twin_request("$iothub/twin/PATCH/properties/reported/", body, topic_suffix=topic_suffix)
        return int(msg.topic.split("/")[3]), msg.topic

    def serve_methods(self, handler: Callable[[str, Any], tuple[int, Any]]) -> None:
        """Answer method requests from a background thread with ``handler(name, payload)``."""

        self._serving_methods = True
        # A request can land between SUBSCRIBE and this call (the hub sends as soon as the
        # subscription is live): move those to the serving queue, or they would never be answered.
        kept: list[Received] = []
        while True:
            try:
                early = self.messages.get_nowait()
            except queue.Empty:
                break
            if early.topic.startswith("$iothub/methods/POST/"):
                self.method_requests.put(early)
            else:
                kept.append(early)
        for item in kept:
            self.messages.put(item)

        def run() -> None:
            while True:
                try:
                    msg = self.method_requests.get(timeout=0.5)
                except queue.Empty:
                    if self._stopped:
                        return
                    continue
                name = msg.topic.split("/")[3]
                rid = msg.topic.split("$rid=")[1]
                status, payload = handler(name, json.loads(msg.payload) if msg.payload else None)
                self.client.publish(f"$iothub/methods/res/{status}/?$rid={rid}", json.dumps(payload), qos=1)

        self._method_thread = threading.Thread(target=run, daemon=True)
        self._method_thread.start()

    def disconnect(self) -> None:
        self._stopped = True
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Close the socket without DISCONNECT (a crash or network loss)."""
        self._stopped = True
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.client.loop_stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


CLI = [sys.executable, "-m", "iot_flows.cli"]


class HubProcess:
    """``iot-flows hub serve`` in a subprocess; reads the printed connection string."""

    def __init__(self, db: Path | str, env: dict[str, str] | None = None, *, ports: tuple[int, int] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.mqtt_port, self.http_port = ports or (free_port(), free_port())
        if "://" in str(db) and "IOT_FLOWS_HUB_PROFILE" not in (env or {}):
            # A database URL has no folder for the profile: keep it out of the working directory.
            env = {**(env or {}), "IOT_FLOWS_HUB_PROFILE": os.path.join(tempfile.mkdtemp(prefix="hub-profile-"), "hub.json")}
        self.proc = subprocess.Popen(
            [*CLI, "hub", "serve", "--db", str(db), "--mqtt-port", str(self.mqtt_port), "--http-port", str(self.http_port),
             *args],
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
                self.hostname = ConnectionString.parse(self.connection_string).host_name
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
