"""`iot-flows run FLOW --param ...`: every library flow is offered, parameters are validated
before anything runs, a real Prefect server runs the flow against a real hub with simulated
devices; run name, UI URL, structured result, exit codes. All as subprocesses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.ops_support import COUNT, OpsHub, device, ops_hub  # noqa: F401


def library_flows() -> set[str]:
    import iot_flows.flows as library
    from prefect import Flow

    return {name.replace("_", "-") for name in library.__all__ if isinstance(getattr(library, name), Flow)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prefect_api(ops_hub: OpsHub) -> Iterator[str]:
    """A real ``prefect server start`` on a free port (its own PREFECT_HOME)."""
    port = free_port()
    env = {**ops_hub.env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, cwd=ops_hub.folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "prefect server did not start"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_run_lists_every_library_flow_with_its_parameters(ops_hub: OpsHub) -> None:
    listed = ops_hub.json("run", "--list")
    assert {f["flow"] for f in listed} == library_flows()
    report = next(f for f in listed if f["flow"] == "fleet-report")
    assert "query_condition" in report["parameters"] and "connection" not in report["parameters"]
    table = ops_hub.cli("run", "--list", "-o", "table")
    assert table.returncode == 0 and "reboot-devices" in table.stdout


def test_run_bad_input_is_one_line_and_runs_nothing(ops_hub: OpsHub) -> None:
    # PREFECT_API_URL points nowhere: a run that got that far would fail differently.
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    for args, needle in [
        (["run", "lock-all-doors"], "unknown flow 'lock-all-doors' (flows: "),
        (["run", "fleet-report", "--param", "colour=blue"], "flow fleet-report has no parameter 'colour'"),
        (["run", "fleet-report", "--param", "query_condition"], "expected name=value"),
        (["run", "reboot-devices", "-p", "max_failure_ratio=7"], "max_failure_ratio: Input should be less than or equal to 1"),
        (["run", "run-method-job"], "method_name: Field required"),
        # checked by Prefect (a flat parameter): it logged two ERROR lines before ours
        (["run", "fleet-report", "-p", "min_devices=abc"],
         "invalid parameters: min_devices: Input should be a valid integer, unable to parse string as an integer"),
    ]:
        done = ops_hub.cli(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("error: ") and needle in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_run_fleet_report_prints_run_name_url_and_result(ops_hub: OpsHub, prefect_api: str) -> None:
    env = {"PREFECT_API_URL": prefect_api}
    done = ops_hub.cli("run", "fleet-report", "-p", f"query_condition=deviceId = '{device(0)}' OR deviceId = '{device(1)}'",
                       env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["total_devices"] == 2
    assert "flow run '" in done.stderr and "(Fleet report) started" in done.stderr
    run_url = next(line.strip() for line in done.stderr.splitlines() if "/runs/flow-run/" in line)
    run_id = run_url.rsplit("/", 1)[1]
    flow_run = httpx.get(f"{prefect_api}/flow_runs/{run_id}").json()
    assert flow_run["state"]["type"] == "COMPLETED" and f"'{flow_run['name']}'" in done.stderr
    table = ops_hub.cli("run", "fleet-report", "-o", "table", env=env, timeout=300)
    assert table.returncode == 0 and "total_devices" in table.stdout and str(COUNT) in table.stdout


def test_run_a_method_job_flow_and_a_failing_one(ops_hub: OpsHub, prefect_api: str) -> None:
    env = {"PREFECT_API_URL": prefect_api}
    two = f"deviceId IN ['{device(2)}', '{device(3)}']"
    done = ops_hub.cli("run", "run-method-job", "-p", "method_name=lockDoor", "-p", f"query_condition={two}",
                       "-p", "poll_interval_seconds=0.2", env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "completed" and summary["succeeded"] == 2
    failing = ops_hub.cli("run", "run-method-job", "-p", "method_name=noSuchMethod", "-p", f"query_condition={two}",
                          "-p", "poll_interval_seconds=0.2", env=env, timeout=300)  # fmt: skip
    assert failing.returncode == 1 and failing.stdout == ""
    last = failing.stderr.strip().splitlines()[-1]
    assert last.startswith("error: flow run-method-job failed: "), failing.stderr


def test_flat_parameters_fill_the_required_request_of_the_firmware_flows(ops_hub: OpsHub, prefect_api: str) -> None:
    """``--param version=... --param package_uri=...`` as the README and the deployments show them:
    the flat parameters override fields of the flows' required ``request`` (refused before)."""
    env = {"PREFECT_API_URL": prefect_api}
    one = f"deviceId = '{device(1)}'"
    done = ops_hub.cli("run", "update-firmware", "-p", "version=9.1.0", "-p", "package_uri=https://fw.example.com/9.1.0.bin",
                       "-p", f"query_condition={one}", env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["updated"] == [device(1)], done.stdout
    twin = ops_hub.json("twin", "show", device(1))
    assert twin["properties"]["reported"]["firmware"]["currentFwVersion"] == "9.1.0"
    dry = ops_hub.cli("run", "roll-out-firmware", "-p", "version=9.2.0", "-p", "package_uri=https://fw.example.com/9.2.0.bin",
                      "-p", f"target_condition={one}", "-p", "dry_run=true", env=env, timeout=300)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert ops_hub.json("twin", "show", device(1))["properties"]["reported"]["firmware"]["currentFwVersion"] == "9.1.0"


def test_a_saved_hub_connection_block_names_the_hub(ops_hub: OpsHub, prefect_api: str, tmp_path: Path) -> None:
    env = {"PREFECT_API_URL": prefect_api}
    save = ("from iot_flows.blocks import HubConnection; import sys; "
            "HubConnection(connection_string=sys.argv[1], base_url=sys.argv[2]).save('ops-hub', overwrite=True)")  # fmt: skip
    saved = subprocess.run([sys.executable, "-c", save, ops_hub.connection_string, ops_hub.url],
                           env={**ops_hub.env, **env}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    named = {**env, "IOT_FLOWS_HUB_CONNECTION": "ops-hub"}
    devices = ops_hub.json("device", "list", env=named, cwd=tmp_path)  # no profile there: the block
    assert {device(i) for i in range(COUNT)} <= {d["deviceId"] for d in devices}
    unknown = ops_hub.cli("device", "list", env={**env, "IOT_FLOWS_HUB_CONNECTION": "no-such-block"}, cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: no saved HubConnection block named 'no-such-block'")
    assert unknown.stderr.count("\n") == 1


def terminal_section_commands() -> list[str]:
    import re

    from tests.cli.test_readme_commands import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("## From the terminal")
    section = readme[start : readme.index("\n## ", start + 1)]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
            for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]  # fmt: skip


def test_readme_from_the_terminal_commands_work_as_written(ops_hub: OpsHub, prefect_api: str) -> None:
    """Every command of the README's "From the terminal" section, literally, in the folder
    where `hub serve` runs with its simulated fleet (Prefect: PREFECT_API_URL set)."""
    commands = terminal_section_commands()
    assert len(commands) >= 10 and all(c.startswith(".venv/bin/iot-flows ") for c in commands), commands
    env = {**ops_hub.env, "PREFECT_API_URL": prefect_api}
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=ops_hub.folder, env=env, text=True,
                              capture_output=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert done.stdout.strip(), command


def test_run_against_an_unreachable_hub_or_a_wrong_key_starts_no_flow(ops_hub: OpsHub) -> None:
    from iot_flows._sas import ConnectionString

    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never reached
    down = ops_hub.cli("run", "fleet-report", "--hub", ops_hub.connection_string, "--hub-url", "http://127.0.0.1:9",
                       env=env)  # fmt: skip
    assert down.returncode == 1 and "cannot reach http://127.0.0.1:9" in down.stderr and down.stderr.count("\n") == 1
    key = ConnectionString.parse(ops_hub.connection_string).shared_access_key
    wrong = ops_hub.connection_string.replace(key, "d3Jvbmcta2V5LXdyb25nLWtleQ==")
    denied = ops_hub.cli("run", "fleet-report", "--hub", wrong, "--hub-url", ops_hub.url, env=env)
    assert denied.returncode == 1 and denied.stderr.startswith("error: IotHubUnauthorizedAccess (401")
    assert "flow run" not in denied.stderr


def test_ctrl_c_during_a_run_in_ephemeral_mode_ends_it_cleanly(ops_hub: OpsHub) -> None:
    """No PREFECT_API_URL: Prefect's temporary server. Found by a newcomer: Ctrl-C (sent by the
    terminal to the whole process group) killed that server at once, so the engine's record of
    the interrupted run failed ("Error logging to API", a hang of up to a minute); and offline,
    every run logged Prefect's "Failed to send telemetry" ERROR."""
    import os
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "iot_flows.cli", "run", "forward-hub-events", "-p", "duration_seconds=120"],
                            cwd=ops_hub.folder, env={**ops_hub.env, "PREFECT_LOGGING_LEVEL": "INFO"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "started" in line and "flow run" in line:
            break
    else:
        raise AssertionError("".join(seen))
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert "Error logging to API" not in err and "All connection attempts failed" not in err, err
    assert "Failed to send telemetry" not in err, err
    assert "started" in err and "hook '_announce'" not in err, err  # Prefect's two INFO lines about our hook
    assert "Traceback" not in err, err
