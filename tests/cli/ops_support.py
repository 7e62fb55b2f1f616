"""A real hub (`iot-flows hub serve`) and simulated devices (`iot-flows fleet simulate`),
both subprocesses in one folder, for the operator-verb tests; ``cli(...)`` runs one verb
as a subprocess there (stdout piped, so ``--output`` defaults to JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_readme_commands import ROOT, Running, shim

COUNT = 4
PREFIX = "sim"  #: fleet simulate's default, which the README's commands name


@dataclass
class OpsHub:
    folder: Path
    env: dict[str, str]
    connection_string: str
    url: str

    def cli(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """``iot-flows ARGS`` in the hub's folder (it finds the hub through the profile)."""
        return subprocess.run([sys.executable, "-m", "iot_flows.cli", *args], cwd=cwd or self.folder,
                              env={**self.env, **(env or {})}, text=True, capture_output=True, timeout=timeout)  # fmt: skip

    def json(self, *args: str, **kw: Any) -> Any:
        """Run a verb that must succeed; its stdout parsed as JSON."""
        done = self.cli(*args, **kw)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout)


def device(i: int) -> str:
    return f"{PREFIX}-{i:05d}"


def base_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOT_FLOWS_", "PREFECT_API_URL", "PREFECT_UI_URL"))}
    env.update({"IOT_FLOWS_HUB_MQTT_PORT": "0", "IOT_FLOWS_HUB_HTTP_PORT": "0", "COLUMNS": "200",
                "PYTHONPATH": str(ROOT), "PATH": f"{folder / '.venv' / 'bin'}:{env.get('PATH', '')}",
                "PREFECT_HOME": str(folder / ".prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"})  # fmt: skip
    return env


@pytest.fixture(scope="module")
def ops_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsHub]:
    """``hub serve`` plus ``fleet simulate --count 4`` (devices sim-00000...) (fast timings) in one folder."""
    folder = tmp_path_factory.mktemp("ops")
    shim(folder)
    env = base_env(folder)
    hub = Running(".venv/bin/iot-flows hub serve --db hub.db", folder, env)
    fleet = None
    try:
        cs = hub.wait_for(r"(?m)^(HostName=\S+)$").group(1)
        url = hub.wait_for(r"REST\s+: (\S+)").group(1)
        fleet = Running(f".venv/bin/iot-flows fleet simulate --count {COUNT} --seed 7"
                        " --reboot-seconds 0.3 --jitter 0", folder, env)  # fmt: skip
        fleet.wait_for(rf"{COUNT}/{COUNT} devices connected", timeout=120)
        yield OpsHub(folder, env, cs, url)
    finally:
        if fleet is not None:
            fleet.interrupt()
        hub.interrupt()
