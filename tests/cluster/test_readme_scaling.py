"""The README's "Scaling out" commands, run literally: PostgreSQL, NATS, two nodes, HAProxy.

The ``bash`` block of that section is run as one ``bash`` script, as a reader pastes it,
with only ports and paths replaced: PostgreSQL's 5432, NATS' 4222 and the nodes' ports by
free ports, the data directory and log file by ones in a temporary folder,
``deploy/haproxy.cfg`` by its absolute path; HAProxy's own listening ports (the
configuration's defaults 1883/8080) come from the ``LB_*`` variables the README
documents. ``iot-flows`` runs this checkout; where there is no ``sudo`` (a root
container), ``sudo -u postgres`` is ``runuser -u postgres --``. Then a device connects
through the balancer and answers a direct method and a method job sent to the balancer.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from iot_flows._sas import ConnectionString
from tests.cluster.test_haproxy import CONFIG, haproxy_binary
from tests.pgcluster import PG_BIN
from tests.running import Running
from tests.support import Device, Service, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Scaling out"


def scaling_out_block() -> str:
    """The first ``bash`` block of the README's "Scaling out" section, as written."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```bash\n(.*?)```", readme[start:end], re.S)
    assert blocks, "no bash block in the README's Scaling out section"
    return str(blocks[0])


def _shims(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True)
    (bin_dir / "iot-flows").write_text(f'#!/bin/sh\nexec {sys.executable} -m iot_flows.cli "$@"\n')
    if shutil.which("sudo") is None:  # a root container: sudo -u USER CMD... is runuser -u USER -- CMD...
        (bin_dir / "sudo").write_text('#!/bin/sh\n[ "$1" = "-u" ] || exit 64\nuser=$2; shift 2\nexec runuser -u "$user" -- "$@"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)


async def _device_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT device_id FROM devices")]
    finally:
        await conn.close()


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the ``postgres`` user can reach (pytest's own tmp folders are root-only)."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL 15 not found in {PG_BIN}: apt-get install postgresql-15")
    haproxy_binary()
    path = Path(tempfile.mkdtemp(prefix="iot-flows-readme-"))
    path.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")  # the data directory and log belong to postgres
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_readme_scaling_out_commands_work_as_written(folder: Path) -> None:
    block = scaling_out_block()
    assert "initdb" in block and "nats-server" in block and block.count("iot-flows hub serve") == 2, block
    assert "haproxy -db -f deploy/haproxy.cfg" in block, block
    ports = {p: str(free_port()) for p in ("5432", "4222", "1884", "1885", "8081", "8082")}
    text = block
    for old, new in ports.items():
        text = re.sub(rf"\b{old}\b", new, text)
    data, log = folder / "pgdata", folder / "pg.log"
    text = text.replace("/var/lib/postgresql/iot-flows", str(data)).replace("/tmp/iot-flows-pg.log", str(log))
    text = text.replace("-k /tmp", f"-k {folder}").replace("deploy/haproxy.cfg", str(CONFIG))
    assert text.count(str(data)) == 2 and "5432" not in text and "4222" not in text, text
    bin_dir = folder / "bin"
    _shims(bin_dir)
    lb_mqtt, lb_http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOT_FLOWS_", "NODE1_", "NODE2_", "LB_", "HUB_TLS"))}
    env.update({
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]),
        "PYTHONPATH": str(ROOT), "COLUMNS": "200",
        "LB_ADDR": "127.0.0.1", "LB_MQTT_PORT": str(lb_mqtt), "LB_HTTP_PORT": str(lb_http),
        "LB_MQTTS_PORT": str(free_port()), "LB_STATS_SOCKET": str(folder / "haproxy.sock"),
    })  # fmt: skip
    work = folder / "work"
    work.mkdir()
    work.chmod(0o755)
    script = Running(text, work, env, script=True)
    svc: Service | None = None
    dev: Device | None = None
    try:
        def both_nodes_printed() -> list[str]:
            found = re.findall(r"^HostName=\S+", script.output, re.M)
            return found if len(found) >= 2 or script.proc.poll() is not None else []

        try:
            strings = wait_until(both_nodes_printed, timeout=90, interval=0.2)
        except TimeoutError:
            raise AssertionError(f"the nodes did not start:\n{script.output}") from None
        assert script.proc.poll() is None, script.output
        connection_string = strings[0]
        host = ConnectionString.parse(connection_string).host_name
        assert host == "hub.example.com", host
        svc = Service(f"http://127.0.0.1:{lb_http}", connection_string)

        def balancer_answers() -> bool:
            try:
                return svc.request("GET", "/healthz").status_code == 200  # type: ignore[union-attr]
            except Exception:
                return False

        assert wait_until(balancer_answers, timeout=60, interval=0.3), script.output
        key = svc.create_device("readme-1")["authentication"]["symmetricKey"]["primaryKey"]
        dev = Device("127.0.0.1", lb_mqtt, host, "readme-1", key)
        dev.serve_methods(lambda name, payload: (200, {"echo": name}))
        # As a device SDK does: a connect refused or unanswered while HAProxy's checks settle is retried.
        attempts = []
        for _ in range(6):
            attempts.append(dev.connect(timeout=10))
            if attempts[-1] == 0:
                break
            dev.client.loop_stop()
            time.sleep(1)
        assert attempts[-1] == 0, f"CONNACK per attempt {attempts}:\n{script.output}"
        dev.subscribe_iothub()
        r = svc.request("POST", "/twins/readme-1/methods", json_body={"methodName": "hello", "responseTimeoutInSeconds": 10})
        assert r.status_code == 200 and r.json() == {"status": 200, "payload": {"echo": "hello"}}, r.text
        r = svc.request("PUT", "/jobs/v2/readme-job", json_body={
            "type": "scheduleDeviceMethod", "queryCondition": "deviceId = 'readme-1'", "maxExecutionTimeInSeconds": 60,
            "cloudToDeviceMethod": {"methodName": "hello", "responseTimeoutInSeconds": 10}})
        assert r.status_code == 200, r.text
        job = wait_until(lambda: (j := svc.request("GET", "/jobs/v2/readme-job").json())["status"]  # type: ignore[union-attr]
                         in ("completed", "failed", "cancelled") and j, timeout=60, interval=0.2)
        assert job["status"] == "completed" and job["deviceJobStatistics"]["succeededCount"] == 1, job
        # the nodes stored into the PostgreSQL the block started
        stored = asyncio.run(_device_ids(f"postgresql://postgres@127.0.0.1:{ports['5432']}/iotflows"))
        assert "readme-1" in stored, stored
    finally:
        if dev is not None:
            dev.drop()
        if svc is not None:
            svc.close()
        script.stop()
        if data.exists():
            cmd = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", "postgres", "--", *cmd]
            subprocess.run(cmd, capture_output=True, timeout=60)
        time.sleep(0.1)
