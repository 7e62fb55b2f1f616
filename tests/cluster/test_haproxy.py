"""The shipped HAProxy configuration (deploy/haproxy.cfg) in front of two hub nodes.

Real parts: a haproxy process on free ports, two ``iot-flows hub serve --bus ...``
subprocesses on one store, a real nats-server, and the fleet simulator connecting
through the balancer. Devices spread over both nodes; direct methods and a method job
sent to the balancer reach every device; after ``kill -9`` of one node its devices
reconnect through the balancer to the other node and answer again, and REST through
the balancer keeps working.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iot_flows.device import Backoff, BehaviourConfig, Fleet
from tests.cluster.conftest import NatsServer
from tests.support import CLI, HubProcess, Service, free_port, wait_until
from tests.tlsutil import make_test_pki

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
LEASE = "2"
FAST = BehaviourConfig(reboot_seconds=0.3, jitter=0.0, window_recheck_seconds=0.5)


def haproxy_binary() -> str:
    """The haproxy executable; fail in one line naming how to get it."""
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)
    if found is None:
        pytest.fail("haproxy not found: apt-get install haproxy")
    return found


class HAProxy:
    """``haproxy -db -f deploy/haproxy.cfg`` with its addresses in the environment."""

    def __init__(self, nodes: list[HubProcess], directory: Path, *, tls: bool = False) -> None:
        self.mqtt_port, self.mqtts_port, self.http_port = free_port(), free_port(), free_port()
        self.stats_socket = str(directory / "haproxy.sock")
        env = {"LB_ADDR": "127.0.0.1", "LB_MQTT_PORT": str(self.mqtt_port), "LB_MQTTS_PORT": str(self.mqtts_port),
               "LB_HTTP_PORT": str(self.http_port), "LB_STATS_SOCKET": self.stats_socket}
        for i, node in enumerate(nodes, start=1):
            env |= {f"NODE{i}_HOST": "127.0.0.1", f"NODE{i}_MQTT_PORT": str(node.mqtt_port),
                    f"NODE{i}_HTTP_PORT": str(node.http_port)}
            if tls:
                env[f"NODE{i}_MQTTS_PORT"] = str(node.mqtts_port)  # type: ignore[attr-defined]
        if tls:
            env["HUB_TLS"] = "1"
        self.proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(CONFIG)], env={**os.environ, **env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: self.proc.poll() is not None or self._all_up(), timeout=15, interval=0.1)
        except BaseException:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` rows (pxname, svname, status, scur, ...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.stats_socket)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().strip().splitlines()
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","))) for line in lines[1:]]

    def servers(self, backend: str) -> dict[str, dict[str, str]]:
        return {r["svname"]: r for r in self.stats() if r["pxname"] == backend and r["svname"].startswith("node")}

    def _all_up(self) -> bool:
        try:
            rows = [r for r in self.stats() if r["svname"].startswith("node")]
        except OSError:
            return False
        return bool(rows) and all(r["status"] == "UP" for r in rows)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stderr.close()  # type: ignore[union-attr]


def _node(db: str, nats: NatsServer, node_id: str, *extra: str) -> HubProcess:
    return HubProcess(db, args=("--bus", nats.url, "--node-id", node_id, "--node-lease-seconds", LEASE, *extra))


class TlsNode(HubProcess):
    """A node with ``--tls-cert/--tls-key``: MQTT/TLS on ``mqtts_port``, REST over HTTPS."""

    def __init__(self, db: str, args: tuple[str, ...], ca_file: str) -> None:
        self.mqtts_port = free_port()
        self.mqtt_port, self.http_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [*CLI, "hub", "serve", "--db", db, "--mqtt-port", str(self.mqtt_port), "--http-port", str(self.http_port),
             "--mqtts-port", str(self.mqtts_port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.base_url = f"https://127.0.0.1:{self.http_port}"
        while line := self.proc.stdout.readline():  # type: ignore[union-attr]
            if line.startswith("HostName="):
                self.connection_string = line.strip()
                break
        else:
            raise AssertionError(f"hub exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        wait_until(lambda: _https_ready(f"{self.base_url}/healthz", ca_file), timeout=15)


def _https_ready(url: str, ca_file: str) -> bool:
    try:
        return httpx.get(url, verify=ca_file).status_code == 200
    except httpx.TransportError:
        return False


def _tls_node(db: str, nats: NatsServer, node_id: str, tls: tuple[str, ...], ca_file: str) -> TlsNode:
    return TlsNode(db, ("--bus", nats.url, "--node-id", node_id, "--node-lease-seconds", LEASE, *tls), ca_file)


class Balanced:
    """Two nodes and the balancer in front of them."""

    def __init__(self, db: str, nats: NatsServer, directory: Path) -> None:
        self.nodes = [_node(db, nats, "n1")]
        try:
            self.nodes.append(_node(db, nats, "n2"))
            self.lb = HAProxy(self.nodes, directory)
        except BaseException:
            for node in self.nodes:
                node.terminate()
            raise
        self.url = f"http://127.0.0.1:{self.lb.http_port}"
        self.connection_string = self.nodes[0].connection_string
        self.service = Service(self.url, self.connection_string)

    def stop(self) -> None:
        self.service.close()
        self.lb.stop()
        for node in self.nodes:
            if node.proc.poll() is None:
                node.terminate()


@pytest.fixture
def balanced(cluster_db: str, nats_server: NatsServer, tmp_path: Path) -> Iterator[Balanced]:
    b = Balanced(cluster_db, nats_server, tmp_path)
    yield b
    b.stop()


def _fleet(b: Balanced, count: int, prefix: str) -> Fleet:
    return Fleet(b.connection_string, count=count, prefix=prefix, mqtt_host="127.0.0.1", mqtt_port=b.lb.mqtt_port,
                 http_url=b.url, tls=False, behaviour=FAST, seed=3, source_addresses=None,
                 backoff=Backoff(initial=0.2, maximum=1.0))


async def _call(svc: Service, method: str, path: str, body: Any = None) -> httpx.Response:
    return await asyncio.to_thread(svc.request, method, path, json_body=body)


async def _invoke(svc: Service, device_id: str) -> httpx.Response:
    return await _call(svc, "POST", f"/twins/{device_id}/methods",
                       {"methodName": "lockDoor", "payload": None, "responseTimeoutInSeconds": 10})


async def _all_answer(svc: Service, device_ids: list[str]) -> None:
    responses = await asyncio.gather(*(_invoke(svc, d) for d in device_ids))
    for device_id, r in zip(device_ids, responses):
        assert r.status_code == 200 and r.json() == {"status": 200, "payload": {"locked": True}}, (device_id, r.text)


async def _until(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_fleet_through_haproxy_over_two_nodes_survives_kill_9(balanced: Balanced) -> None:
    b, svc = balanced, balanced.service
    fleet = _fleet(b, 12, "lb")
    await fleet.start(timeout=60)
    try:
        await fleet.wait_connected(timeout=30)
        ids = fleet.device_ids()
        # the balancer spread the devices over both nodes
        sessions = {name: int(row["scur"]) for name, row in b.lb.servers("hub_mqtt").items()}
        assert sessions["node1"] >= 3 and sessions["node2"] >= 3 and sum(sessions.values()) == 12, sessions
        # direct methods through the balancer reach every device, wherever it is connected
        await _all_answer(svc, ids)
        # a method job through the balancer reaches every device
        for device_id in ids:
            r = await _call(svc, "PATCH", f"/twins/{device_id}", {"tags": {"fleet": "lb"}})
            assert r.status_code == 200, r.text
        r = await _call(svc, "PUT", "/jobs/v2/lb-job", {
            "type": "scheduleDeviceMethod", "queryCondition": "tags.fleet = 'lb'", "maxExecutionTimeInSeconds": 60,
            "cloudToDeviceMethod": {"methodName": "lockDoor", "responseTimeoutInSeconds": 10}})
        assert r.status_code == 200, r.text

        async def job_done() -> Any:
            j = (await _call(svc, "GET", "/jobs/v2/lb-job")).json()
            return j["status"] not in ("queued", "scheduled", "running") and j

        job = await _until(job_done, 60)
        assert job and job["status"] == "completed", job
        assert job["deviceJobStatistics"]["succeededCount"] == 12, job

        # kill -9 of node 1: its devices reconnect through the balancer to node 2 and answer again
        b.nodes[0].kill9()

        async def moved() -> bool:
            rows = b.lb.servers("hub_mqtt")
            return rows["node1"]["status"] != "UP" and int(rows["node2"]["scur"]) == 12 and fleet.stats.connected == 12

        assert await _until(moved, 30), (b.lb.servers("hub_mqtt"), fleet.stats)

        async def all_answer() -> bool:
            rs = await asyncio.gather(*(_invoke(svc, d) for d in ids))
            return all(r.status_code == 200 for r in rs)

        assert await _until(all_answer, 20)  # the dead node's presence claims expire with its lease
        await _all_answer(svc, ids)
    finally:
        await fleet.stop()


def test_fleet_simulate_cli_through_haproxy_over_two_nodes(balanced: Balanced, tmp_path: Path) -> None:
    """``iot-flows fleet simulate`` as a user runs it, pointed at the balancer: its devices
    spread over both nodes, answer methods and a method job sent to the balancer, and
    Ctrl-C stops it with its final statistics."""
    b, svc = balanced, balanced.service
    count = 10
    proc = subprocess.Popen(
        [*CLI, "fleet", "simulate", "--hub", b.connection_string, "--hub-url", b.url,
         "--mqtt-host", "127.0.0.1", "--mqtt-port", str(b.lb.mqtt_port), "--no-tls",
         "--count", str(count), "--prefix", "cli", "--reboot-seconds", "0.3", "--jitter", "0", "--json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        def sessions() -> dict[str, int]:
            return {name: int(row["scur"]) for name, row in b.lb.servers("hub_mqtt").items()}

        wait_until(lambda: proc.poll() is not None or sum(sessions().values()) == count, timeout=90, interval=0.2)
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        spread = sessions()
        assert spread["node1"] >= 2 and spread["node2"] >= 2, spread
        ids = [f"cli-{i:05d}" for i in range(count)]

        def all_answer() -> bool:
            rs = [svc.request("POST", f"/twins/{d}/methods", json_body={
                "methodName": "lockDoor", "payload": None, "responseTimeoutInSeconds": 10}) for d in ids]
            return all(r.status_code == 200 and r.json() == {"status": 200, "payload": {"locked": True}} for r in rs)

        assert wait_until(all_answer, timeout=30, interval=0.5)  # method SUBSCRIBEs may still be in flight
        r = svc.request("PUT", "/jobs/v2/cli-job", json_body={
            "type": "scheduleDeviceMethod", "queryCondition": "deviceId IN ['" + "', '".join(ids) + "']",
            "maxExecutionTimeInSeconds": 60, "cloudToDeviceMethod": {"methodName": "lockDoor", "responseTimeoutInSeconds": 10}})
        assert r.status_code == 200, r.text
        job = wait_until(lambda: (j := svc.request("GET", "/jobs/v2/cli-job").json())["status"]
                         in ("completed", "failed", "cancelled") and j, timeout=60, interval=0.2)
        assert job["status"] == "completed" and job["deviceJobStatistics"]["succeededCount"] == count, job
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["total"] == count and stats["connected_at_stop"] == count and stats["failed"] == 0, (stats, err)


def test_rest_through_haproxy_while_one_node_is_down(balanced: Balanced) -> None:
    svc = balanced.service
    created = [svc.create_device(f"rest-{i}")["deviceId"] for i in range(4)]
    balanced.nodes[1].kill9()
    # every request is answered, including those the balancer sends before it marks node 2 down
    for i in range(20):
        device_id = created[i % 4]
        r = svc.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"round": i}})
        assert r.status_code == 200, r.text
        assert svc.request("GET", f"/twins/{device_id}").json()["tags"] == {"round": i}
    # the health checks take node 2 out; REST goes on through node 1
    wait_until(lambda: balanced.lb.servers("hub_rest")["node2"]["status"] != "UP", timeout=10, interval=0.1)
    assert svc.create_device("rest-after")["deviceId"] == "rest-after"
    r = svc.request("POST", "/devices/query", json_body={"query": "SELECT deviceId FROM devices WHERE deviceId = 'rest-after'"})
    assert r.status_code == 200 and r.json() == [{"deviceId": "rest-after"}], r.text
    assert svc.request("GET", "/twins/rest-0").json()["tags"] == {"round": 16}


async def test_mqtt_tls_and_https_pass_through_haproxy(cluster_db: str, nats_server: NatsServer, tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    nodes = [_tls_node(cluster_db, nats_server, "t1", tls, str(pki.ca_cert))]
    try:
        nodes.append(_tls_node(cluster_db, nats_server, "t2", tls, str(pki.ca_cert)))
        lb = HAProxy(nodes, tmp_path, tls=True)
    except BaseException:
        for node in nodes:
            node.terminate()
        raise
    url = f"https://127.0.0.1:{lb.http_port}"
    svc = Service(url, nodes[0].connection_string, verify=str(pki.ca_cert))
    fleet = Fleet(nodes[0].connection_string, count=4, prefix="tls", mqtt_host="127.0.0.1", mqtt_port=lb.mqtts_port,
                  http_url=url, tls=True, ca_file=str(pki.ca_cert), behaviour=FAST, seed=3, source_addresses=None)
    try:
        await fleet.start(timeout=60)
        await fleet.wait_connected(timeout=30)
        sessions = {name: int(row["scur"]) for name, row in lb.servers("hub_mqtts").items()}
        assert sessions == {"node1": 2, "node2": 2}, sessions
        await _all_answer(svc, fleet.device_ids())
    finally:
        await fleet.stop()
        svc.close()
        lb.stop()
        for node in nodes:
            node.terminate()


@pytest.mark.parametrize("tls", [False, True])
def test_shipped_config_is_valid_with_its_defaults(tls: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE1_", "NODE2_", "LB_", "HUB_TLS"))}
    if tls:
        env["HUB_TLS"] = "1"
    out = subprocess.run([haproxy_binary(), "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
