"""``python -m iot_flows.demo --quick`` end to end, as a user runs it (ephemeral Prefect).

It runs in its own session with a fresh ``PREFECT_HOME``, so afterwards the test can check
that no process of that session is left (the Prefect temporary server included) and that
the hub's temporary folder is gone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iot_flows.demo._env import FleetLayout
from iot_flows.demo._scenarios import scenarios

ROOT = Path(__file__).resolve().parent.parent


def _session_processes(sid: int) -> list[str]:
    """Processes still alive in session ``sid`` (Linux /proc), as 'pid cmdline'."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                alive.append(f"{stat.parent.name} {cmd}")
        except (OSError, IndexError, ValueError):
            continue
    return alive


def _demo_env(tmp_path: Path) -> dict[str, str]:
    """The user's environment without Prefect/iot-flows settings, a fresh PREFECT_HOME, a wide table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "IOT_FLOWS_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["COLUMNS"] = "160"
    return env


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_demo_runs_every_scenario_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = _demo_env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "iot_flows.demo", "--quick"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out

    assert "100/100 simulated devices connected" in out
    expected = scenarios(FleetLayout(100))
    assert f"all {len(expected)} scenarios succeeded" in out, out
    rows = {cells[0]: cells for line in out.splitlines() if line.startswith("│")
            for cells in [[c.strip() for c in line.strip("│").split("│")]]}  # fmt: skip
    for scenario in expected:
        row = rows[scenario.key]
        _seed, _run, state, devices, ok, failed, _seconds, task_runs, _subflows = row[1:10]
        assert state == "Completed", row
        assert int(devices) == int(ok) == scenario.expected_devices and failed == "0", row
        assert 1 <= int(task_runs) <= 60, row  # bounded: a handful per flow, never one per device

    folder = re.search(r"SQLite in (\S+);", out)
    assert folder and not Path(folder.group(1)).exists(), "the hub's temporary folder is removed"
    if Path("/proc/self/stat").exists():
        assert _session_processes(proc.pid) == [], "the demo left processes behind"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_default_size_firmware_scenario_is_not_hit_by_the_rollouts_injected_failures(tmp_path: Path) -> None:
    # Found by a newcomer: at the default 1,000 devices the firmware scenario also targeted
    # building 44, whose downloads fail on purpose for the rollout, and the demo exited 1.
    proc = subprocess.run(
        [sys.executable, "-m", "iot_flows.demo", "--only", "firmware"], cwd=ROOT, env=_demo_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    expected = FleetLayout(1000).size("43", ("canary", "wave1"))
    assert "all 1 scenarios succeeded" in proc.stdout, proc.stdout
    row = re.search(r"│\s*Completed\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│", proc.stdout)
    assert row and row.groups() == (str(expected), str(expected), "0"), proc.stdout
