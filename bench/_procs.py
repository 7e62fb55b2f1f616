"""Processes the bench harness starts: the hub, Mosquitto, and a lean fleet (``bench._fleet_proc``).

Each is a subprocess on 127.0.0.1 with free ports, so that every process's CPU and peak
RSS can be read from ``/proc`` on its own.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEVICE_KEY = "bGVhbmJlbmNoLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDE="
HOSTNAME = "bench.azure-devices.local"
MOSQUITTO_HINT = "mosquitto not found: install Debian's package (`apt-get install mosquitto`) or put `mosquitto` on PATH"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) in KB."""
    out = {"VmRSS": 0, "VmHWM": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Hub:
    """``iot-flows hub serve`` on free ports with a temp SQLite file or ``db`` (a PostgreSQL URL; optionally TLS).

    ``extra``: more ``hub serve`` options (a cluster node's ``--bus``, ``--node-id``); nodes
    sharing one store share ``owner_key``.
    """

    def __init__(self, tmp: Path, tls: tuple[Path, Path, Path] | None = None, env: dict[str, str] | None = None,
                 src: str | None = None, db: str | None = None, extra: list[str] | None = None,
                 owner_key: str | None = None) -> None:
        from iot_flows._sas import ConnectionString, generate_key

        self.owner_key = owner_key or generate_key()
        self.mqtt_port, self.http_port, self.mqtts_port = free_port(), free_port(), free_port()
        self.tls = tls
        cmd = [sys.executable, "-c", "from iot_flows.cli._main import main; main()", "hub", "serve",
               "--mqtt-port", str(self.mqtt_port), "--http-port", str(self.http_port),
               "--hostname", HOSTNAME, "--db", db or str(tmp / f"hub-{self.http_port}.db")]
        if tls is not None:
            cmd += ["--mqtts-port", str(self.mqtts_port), "--tls-cert", str(tls[1]), "--tls-key", str(tls[2])]
        cmd += extra or []  # e.g. a cluster node's --bus and --node-id
        # The profile goes next to the run's files: with a PostgreSQL URL as --db it would be
        # ./.iot-flows/hub.json, the profile of the user's own hub in that folder.
        full_env = {**os.environ, "IOT_FLOWS_HUB_OWNER_KEY": self.owner_key,
                    "IOT_FLOWS_HUB_PROFILE": str(tmp / f"hub-{self.http_port}.json"), **(env or {})}  # fmt: skip
        if src:  # another revision's iot_flows (e.g. `git archive <rev> iot_flows | tar -x -C dir`)
            full_env["PYTHONPATH"] = src
        self.log = tmp / f"hub-{self.http_port}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=full_env, cwd=src or ROOT, stdout=subprocess.DEVNULL, stderr=log)
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.http_port}"
        self.verify: bool | str = str(tls[0]) if tls else True
        self.device_port = self.mqtts_port if tls else self.mqtt_port
        self.cs = ConnectionString(host_name=HOSTNAME, shared_access_key_name="iothubowner",
                                   shared_access_key=self.owner_key)
        try:
            wait_port(self.http_port, self.proc, "hub")
            wait_port(self.device_port, self.proc, "hub")
        except RuntimeError as exc:
            stop(self.proc)
            raise RuntimeError(f"{exc}: {self.log.read_text()[-2000:]}") from None

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.cs.token()}

    def provision(self, count: int, prefix: str = "bench") -> None:
        """Bulk-create ``{prefix}-00000``... with one shared key (100 per import request)."""
        ids = [f"{prefix}-{i:05d}" for i in range(count)]
        auth = {"symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY}}
        with httpx.Client(base_url=self.base_url, timeout=120, verify=self.verify) as http:
            for i in range(0, len(ids), 100):
                body = [{"id": d, "importMode": "createOrUpdate", "authentication": auth} for d in ids[i:i + 100]]
                http.post("/devices?api-version=2021-04-12", json=body, headers=self.headers()).raise_for_status()

    def stop(self) -> None:
        stop(self.proc)


class Mosquitto:
    """Debian's ``mosquitto`` on a free port (anonymous, no persistence, optional TLS listener)."""

    def __init__(self, tmp: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            raise RuntimeError(MOSQUITTO_HINT)
        self.port = free_port()
        conf = tmp / f"mosquitto-{self.port}.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "max_connections -1",
                 "persistence false", "log_type error", "max_queued_messages 100000",
                 # as root, mosquitto switches to the user "mosquitto", who cannot read our temp dir
                 f"user {getpass.getuser()}", f"log_dest file {tmp / f'mosquitto-{self.port}.log'}"]
        if tls is not None:
            lines += [f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "mosquitto")

    def stop(self) -> None:
        stop(self.proc)


def fleet_processes(count: int) -> int:
    """How many fleet processes drive ``count`` devices: one per 2,500 devices, at most one
    per CPU (a single Python fleet process capped even Mosquitto at ~3,000 connects/s)."""
    return max(1, min(os.cpu_count() or 1, count // 2500))


class FleetProc:
    """``python -m bench._fleet_proc``: N lean devices in ``procs`` processes of their own
    (default :func:`fleet_processes`), started together; figures are summed over processes
    (connect time: the slowest process)."""

    def __init__(self, mode: str, port: int, count: int, *, key: str = DEVICE_KEY, tls_ca: str | None = None,
                 prefix: str = "bench", loop: str = "auto", procs: int | None = None) -> None:
        procs = max(1, min(count, procs if procs is not None else fleet_processes(count)))
        self.cpu_start = 0.0
        self.procs: list[subprocess.Popen[str]] = []
        bounds = [count * i // procs for i in range(procs + 1)]
        for first, end in zip(bounds, bounds[1:], strict=False):
            cmd = [sys.executable, "-m", "bench._fleet_proc", "--mode", mode, "--port", str(port),
                   "--first", str(first), "--count", str(end - first), "--prefix", prefix, "--hostname", HOSTNAME,
                   "--key", key, "--loop", loop, "--wait-go"]
            if tls_ca:
                cmd += ["--tls-ca", tls_ca]
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for proc in self.procs:
            if not proc.stdout.readline():  # type: ignore[union-attr]  # {"event": "started"}
                raise RuntimeError(f"fleet exited with {proc.wait()} before connecting")
        for proc in self.procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        readies = []
        for proc in self.procs:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"fleet exited with {proc.wait()} before connecting")
            readies.append(json.loads(line))
        self.proc = self.procs[0]
        self.ready: dict[str, Any] = {
            "event": "ready", "connect_seconds": max(r["connect_seconds"] for r in readies),
            "connected": sum(r["connected"] for r in readies), "failed": sum(r["failed"] for r in readies),
            "processes": len(readies),
        }

    def command(self, name: str) -> dict[str, Any]:
        """Send ``name`` to every process; sums of their answers (``patch_seconds``: the longest)."""
        for proc in self.procs:
            proc.stdin.write(name + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        answers = [dict(json.loads(proc.stdout.readline())) for proc in self.procs]  # type: ignore[union-attr]
        out: dict[str, Any] = {}
        for answer in answers:
            for key, value in answer.items():
                out[key] = max(out.get(key, 0), value) if key == "patch_seconds" else out.get(key, 0) + value
        return out

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.stdin.close()  # type: ignore[union-attr]
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
