"""`iot-flows device ...` against a real hub with simulated devices, as subprocesses."""

from __future__ import annotations

import json

from iot_flows._sas import ConnectionString
from tests.cli.ops_support import COUNT, OpsHub, device, ops_hub  # noqa: F401


def test_device_list_json_and_table(ops_hub: OpsHub) -> None:
    devices = ops_hub.json("device", "list")
    ours = {d["deviceId"]: d for d in devices if d["deviceId"].startswith("sim-")}
    assert len(ours) == COUNT
    assert all(d["connectionState"] == "Connected" and d["status"] == "enabled" for d in ours.values())
    assert len(ops_hub.json("device", "list", "--top", "2")) == 2
    table = ops_hub.cli("device", "list", "--output", "table")
    assert table.returncode == 0, table.stderr
    assert "deviceId" in table.stdout and device(0) in table.stdout and "Connected" in table.stdout
    assert not table.stdout.lstrip().startswith("[")


def test_device_create_show_disable_enable_delete(ops_hub: OpsHub) -> None:
    created = ops_hub.json("device", "create", "cli-made")
    assert created["deviceId"] == "cli-made" and created["status"] == "enabled"
    assert created["authentication"]["symmetricKey"]["primaryKey"]
    shown = ops_hub.json("device", "show", "cli-made")
    assert shown["etag"] == created["etag"]
    table = ops_hub.cli("device", "show", "cli-made", "-o", "table")
    assert table.returncode == 0 and "cli-made" in table.stdout and "status" in table.stdout

    disabled = ops_hub.json("device", "disable", "cli-made", "--reason", "stolen")
    assert disabled["status"] == "disabled" and disabled["statusReason"] == "stolen"
    assert disabled["authentication"] == created["authentication"]  # keys kept
    assert ops_hub.json("device", "enable", "cli-made")["status"] == "enabled"

    again = ops_hub.cli("device", "create", "cli-made")
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "DeviceAlreadyExists (409001)" in again.stderr

    assert ops_hub.json("device", "delete", "cli-made") == {"deviceId": "cli-made", "deleted": True}
    gone = ops_hub.cli("device", "show", "cli-made")
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("error: DeviceNotFound (404001)") and gone.stderr.count("\n") == 1


def test_disable_drops_the_device_and_enable_lets_it_back(ops_hub: OpsHub) -> None:
    victim = device(COUNT - 1)
    assert ops_hub.json("device", "disable", victim)["status"] == "disabled"
    ops_hub.json("device", "enable", victim)
    assert ops_hub.json("device", "show", victim)["status"] == "enabled"


def test_wrong_key_is_one_line_401_and_nothing_changes(ops_hub: OpsHub) -> None:
    cs = ConnectionString.parse(ops_hub.connection_string)
    wrong = ops_hub.connection_string.replace(cs.shared_access_key, "d3Jvbmcta2V5LXdyb25nLWtleQ==")
    done = ops_hub.cli("device", "create", "never-made", "--hub", wrong, "--hub-url", ops_hub.url)
    assert done.returncode == 1
    assert done.stderr.startswith("error: IotHubUnauthorizedAccess (401") and done.stderr.count("\n") == 1
    assert ops_hub.cli("device", "show", "never-made").returncode == 1


def test_unreachable_hub_and_no_hub_are_one_line(ops_hub: OpsHub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = ops_hub.cli("device", "list", "--hub", ops_hub.connection_string, "--hub-url", "http://127.0.0.1:9")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "cannot reach http://127.0.0.1:9" in done.stderr
    nowhere = ops_hub.cli("device", "list", cwd=tmp_path)
    assert nowhere.returncode == 2 and nowhere.stderr.startswith("error: no hub") and "hub serve" in nowhere.stderr


def test_environment_names_the_hub(ops_hub: OpsHub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"IOT_FLOWS_HUB_CONNECTION_STRING": ops_hub.connection_string, "IOT_FLOWS_HUB_URL": ops_hub.url}
    devices = ops_hub.json("device", "list", env=env, cwd=tmp_path)
    assert {device(i) for i in range(COUNT)} <= {d["deviceId"] for d in devices}
    assert json.loads(ops_hub.cli("device", "show", device(0), env=env, cwd=tmp_path).stdout)["deviceId"] == device(0)


def test_output_defaults_to_a_table_on_a_terminal(ops_hub: OpsHub) -> None:
    import os
    import pty
    import subprocess
    import sys

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "iot_flows.cli", "device", "show", device(0)], cwd=ops_hub.folder,
                            env=ops_hub.env, stdout=terminal, stderr=subprocess.PIPE)  # fmt: skip
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(120) == 0
    os.close(controller)
    shown = b"".join(chunks).decode()
    assert "property" in shown and device(0) in shown and not shown.lstrip().startswith("{")
