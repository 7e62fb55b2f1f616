"""A real ``prefect server start``, ``iot-flows hub serve`` and ``iot-flows fleet simulate``, as subprocesses.

Used by tests/test_prefect_server.py. Every subprocess gets its own environment built
from scratch for Prefect (no ``PREFECT_*`` inherited from the test session, whose other
tests run under ``prefect_test_harness``), its own ``PREFECT_HOME`` and free ports on
127.0.0.1. Each process runs in its own process group, which ``stop`` ends.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
IOT_FLOWS = str(BIN / "iot-flows")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without PREFECT_* / IOT_FLOWS_*, plus ``extra``; PWD is the repo root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "IOT_FLOWS_"))}
    env.update(PYTHONUNBUFFERED="1", PWD=str(ROOT), **extra)
    return env


class Process:
    """A subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.args, self.log = args, log
        self._file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._file, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in the output; raises with the output's tail on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args[:3]} exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} from {self.args[:3]} in {timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._file.close()


class PrefectServer:
    """``prefect server start`` on a free port with its own PREFECT_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = clean_env(
            PREFECT_HOME=str(home),
            PREFECT_API_URL=self.api_url,
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="INFO",
        )
        server_env = {k: v for k, v in self.env.items() if k != "PREFECT_API_URL"}
        self.process = Process([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                               server_env, home / "server.log")  # fmt: skip
        self.http = httpx.Client(base_url=self.api_url, timeout=30)

    def wait_healthy(self, timeout: float = 120.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.proc.poll() is not None:
                raise AssertionError(f"prefect server exited {self.process.proc.returncode}:\n{self.process.tail()}")
            try:
                if self.http.get("/health").status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"prefect server not healthy in {timeout:.0f} s:\n{self.process.tail()}")

    def cli(self, *args: str, timeout: float = 300, check: bool = True, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run ``prefect ARGS`` against this server (from the repo root); raises with the output when it fails."""
        done = subprocess.run([PREFECT, *args], env={**self.env, **extra}, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def python(self, code: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-c", code], env={**self.env, **extra}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"python -c exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.post(path, json=body or {})
        response.raise_for_status()
        return response.json()

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def wait_flow_run(self, flow_run_id: str, timeout: float) -> dict[str, Any]:
        """Poll a flow run until its state is final; returns the run."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(f"/flow_runs/{flow_run_id}")
            if run["state"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            if time.monotonic() > deadline:
                return run
            time.sleep(0.5)

    def stop(self) -> None:
        self.http.close()
        self.process.stop()


class Hub:
    """``iot-flows hub serve`` on free ports, SQLite in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.mqtt_port, self.http_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.process = Process([IOT_FLOWS, "hub", "serve", "--mqtt-port", str(self.mqtt_port),
                                "--http-port", str(self.http_port), "--db", str(folder / "hub.db")],
                               clean_env(), folder / "hub.log")  # fmt: skip
        self.connection_string = self.process.wait_for(r"Service connection string:\s*\n(\S+)", 60).group(1)

    def fleet(self, folder: Path, count: int, *extra: str) -> Process:
        """``iot-flows fleet simulate`` with fast device timings; returns once it says the devices are tagged."""
        args = [IOT_FLOWS, "fleet", "simulate", "--hub", self.connection_string, "--count", str(count),
                "--mqtt-host", "127.0.0.1", "--mqtt-port", str(self.mqtt_port), "--http-url", self.base_url,
                "--no-tls", "--reboot-seconds", "0.5", "--factory-reset-seconds", "0.5", "--fw-wait-seconds", "0.1",
                "--fw-download-seconds", "0.3", "--fw-apply-seconds", "0.3", "--config-apply-seconds", "0.2", *extra]  # fmt: skip
        process = Process(args, clean_env(), folder / "fleet.log")
        process.wait_for(r"devices connected in", 120)
        return process

    def stop(self) -> None:
        self.process.stop()
