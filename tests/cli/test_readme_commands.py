"""The README's hub and device commands, run literally, in order, as a reader would.

Each ``bash`` block of the README's "The hub" and "Devices and the simulator" sections is
split into commands (comments skipped) and run with ``bash -c`` in a fresh folder whose
``.venv/bin/iot-flows`` runs this checkout. Ports come from the environment the README
documents (``IOT_FLOWS_HUB_MQTT_PORT=0``: free ports), so the commands stay as written.
A ``<placeholder>`` is filled as a reader fills it: with the connection string ``hub serve`` printed.
``hub serve`` keeps running for the commands after it; ``fleet simulate`` runs until its
devices are connected, then gets Ctrl-C, as a reader would press it, and must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from iot_flows._sas import ConnectionString
from iot_flows._settings import DEFAULT_HOSTNAME
from tests.running import Running

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("## The hub: `iot-flows hub serve`", "## Devices and the simulator")


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    commands = []
    for title in SECTIONS:
        start = readme.index(title)
        end = readme.find("\n## ", start + len(title))
        section = readme[start : end if end != -1 else None]
        for block in re.findall(r"```bash\n(.*?)```", section, re.S):
            commands += [
                line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")
            ]
    return commands


def shim(folder: Path) -> None:
    """``folder/.venv/bin/iot-flows`` running this checkout's CLI with this interpreter."""
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "iot-flows"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m iot_flows.cli "$@"\n')
    script.chmod(0o755)


@pytest.fixture
def reader_env(tmp_path: Path) -> dict[str, str]:
    shim(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_FLOWS_")}
    env.update({"IOT_FLOWS_HUB_MQTT_PORT": "0", "IOT_FLOWS_HUB_HTTP_PORT": "0", "COLUMNS": "200",
                "PYTHONPATH": str(ROOT), "PATH": f"{tmp_path / '.venv' / 'bin'}:{env.get('PATH', '')}"})  # fmt: skip
    return env


def test_readme_hub_and_device_commands_work_as_written(tmp_path: Path, reader_env: dict[str, str]) -> None:
    commands = readme_commands()
    assert commands and "hub serve" in commands[0], commands
    hub: Running | None = None
    filled: dict[str, str] = {}
    try:
        for command in commands:
            if hub is not None:
                for placeholder, value in filled.items():
                    command = command.replace(placeholder, value)
            assert "<" not in command, f"unfilled placeholder in {command!r}"
            if "hub serve" in command:
                hub = Running(command, tmp_path, reader_env)
                cs = hub.wait_for(r"(?m)^(HostName=\S+)$").group(1)
                filled["<the connection string hub serve printed>"] = cs
                url = hub.wait_for(r"REST\s+: (\S+)").group(1)
                assert httpx.get(f"{url}/healthz").status_code == 200
            elif "fleet simulate" in command:
                fleet = Running(command, tmp_path, reader_env)
                fleet.wait_for(r"(\d+)/\1 devices connected", timeout=120)
                assert fleet.interrupt() == 0, fleet.output
                assert "0 failed" in fleet.output, fleet.output
            else:
                done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=reader_env, text=True,
                                      capture_output=True, timeout=120)  # fmt: skip
                assert done.returncode == 0, (command, done.stdout, done.stderr)
    finally:
        if hub is not None:
            assert hub.interrupt() == 0, hub.output


def test_fleet_simulate_with_the_printed_connection_string_and_the_printed_commands(
    tmp_path: Path, reader_env: dict[str, str]
) -> None:
    """Issue 16 item 12: ``--hub "<the string hub serve printed>"`` reached https://localhost:443."""
    (tmp_path / "data").mkdir()  # --db does not create folders
    hub = Running(".venv/bin/iot-flows hub serve --db data/hub.db", tmp_path, reader_env)
    try:
        cs = hub.wait_for(r"(?m)^(HostName=\S+)$").group(1)
        next_lines = hub.wait_for(r"Next, in another terminal in this folder:\n  (.+)\nor from anywhere:\n  (.+)\n")
        profile = tmp_path / "data" / ".iot-flows" / "hub.json"
        assert profile.exists() and (profile.stat().st_mode & 0o777) == 0o600
        # the profile sits next to the db, so the printed command names it
        assert "--profile data/.iot-flows/hub.json" in next_lines.group(1)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        for command, cwd in [
            (next_lines.group(1) + " --count 3 --prefix p1", tmp_path),
            (next_lines.group(2) + " --count 3 --prefix p2", elsewhere),  # "from anywhere": no profile there
            (
                f'iot-flows fleet simulate --count 3 --prefix p3 --profile data/.iot-flows/hub.json --hub "{cs}"',
                tmp_path,
            ),
        ]:
            fleet = Running(command, cwd, reader_env)
            fleet.wait_for(r"3/3 devices connected", timeout=120)
            assert fleet.interrupt() == 0, fleet.output
    finally:
        assert hub.interrupt() == 0, hub.output


def test_fleet_simulate_without_a_hub_says_how_to_get_one(tmp_path: Path, reader_env: dict[str, str]) -> None:
    done = subprocess.run([".venv/bin/iot-flows", "fleet", "simulate", "--count", "1"], cwd=tmp_path, env=reader_env,
                          text=True, capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "no hub" in done.stderr and "hub serve" in done.stderr


def test_hub_serve_flag_beats_environment_beats_default(tmp_path: Path, reader_env: dict[str, str]) -> None:
    def hostname(command: str, env: dict[str, str]) -> str:
        hub = Running(command, tmp_path, env)
        try:
            cs = hub.wait_for(r"(?m)^(HostName=\S+)$").group(1)
        finally:
            assert hub.interrupt() == 0, hub.output
        return ConnectionString.parse(cs).host_name

    for folder in "abc":  # one database each; --db does not create folders
        (tmp_path / folder).mkdir()
    assert hostname(".venv/bin/iot-flows hub serve --db a/hub.db", reader_env) == DEFAULT_HOSTNAME
    env = {**reader_env, "IOT_FLOWS_HUB_HOSTNAME": "from-env.example"}
    assert hostname(".venv/bin/iot-flows hub serve --db b/hub.db", env) == "from-env.example"
    assert (
        hostname(".venv/bin/iot-flows hub serve --db c/hub.db --hostname from-flag.example", env) == "from-flag.example"
    )
