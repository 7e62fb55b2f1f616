"""`iot-flows twin ...`, `iot-flows query`, `iot-flows method invoke` against a real hub with
simulated devices, as subprocesses: output in both formats, exit codes, bad input."""

from __future__ import annotations

from tests.cli.ops_support import COUNT, OpsHub, device, ops_hub  # noqa: F401


def test_twin_show_and_update(ops_hub: OpsHub) -> None:
    twin = ops_hub.json("twin", "show", device(0))
    assert twin["deviceId"] == device(0) and "reported" in twin["properties"]
    table = ops_hub.cli("twin", "show", device(0), "-o", "table")
    assert table.returncode == 0 and "properties.desired" in table.stdout and device(0) in table.stdout

    updated = ops_hub.json("twin", "update", device(0), "--desired", '{"telemetryInterval": 30}',
                           "--tags", '{"building": "43"}')  # fmt: skip
    assert updated["properties"]["desired"]["telemetryInterval"] == 30
    assert updated["tags"]["building"] == "43"
    again = ops_hub.json("twin", "update", device(0), "--tags", '{"floor": 2}', "--etag", updated["etag"])
    assert again["tags"] == {"building": "43", "floor": 2}


def test_twin_update_stale_etag_is_412(ops_hub: OpsHub) -> None:
    before = ops_hub.json("twin", "show", device(1))
    ops_hub.json("twin", "update", device(1), "--tags", '{"x": 1}')
    stale = ops_hub.cli("twin", "update", device(1), "--tags", '{"x": 2}', "--etag", before["etag"])
    assert stale.returncode == 1 and stale.stderr.count("\n") == 1
    assert stale.stderr.startswith("error: PreconditionFailed (412")
    assert ops_hub.json("twin", "show", device(1))["tags"]["x"] == 1


def test_twin_update_bad_input_changes_nothing(ops_hub: OpsHub) -> None:
    before = ops_hub.json("twin", "show", device(2))
    for args, needle in [
        (["--desired", "{not json"], "--desired is not valid JSON"),
        (["--tags", "[1, 2]"], "--tags must be a JSON object"),
        ([], "nothing to update"),
    ]:
        done = ops_hub.cli("twin", "update", device(2), *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and needle in done.stderr and done.stderr.count("\n") == 1
    assert ops_hub.json("twin", "show", device(2))["etag"] == before["etag"]
    missing = ops_hub.cli("twin", "show", "no-such-device")
    assert missing.returncode == 1 and missing.stderr.startswith("error: DeviceNotFound (404001)")


def test_query_all_pages_top_and_table(ops_hub: OpsHub) -> None:
    ids = ", ".join(f"'{device(i)}'" for i in range(COUNT))
    q = f"SELECT * FROM devices WHERE deviceId IN [{ids}]"
    everyone = ops_hub.json("query", q, "--page-size", "1")  # one page per device: continuation followed
    assert sorted(d["deviceId"] for d in everyone) == [device(i) for i in range(COUNT)]
    assert len(ops_hub.json("query", q, "--page-size", "1", "--top", "3")) == 3
    counted = ops_hub.json("query", f"SELECT COUNT() AS n FROM devices WHERE deviceId IN [{ids}]")
    assert counted == [{"n": COUNT}]
    table = ops_hub.cli("query", q, "-o", "table")
    assert table.returncode == 0 and device(0) in table.stdout and "connectionState" in table.stdout
    bad = ops_hub.cli("query", "SELEC nonsense")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "(400" in bad.stderr


def test_method_invoke(ops_hub: OpsHub) -> None:
    result = ops_hub.json("method", "invoke", device(0), "lockDoor", "--payload", '{"reason": "cli"}', "--timeout", "10")
    assert result["status"] == 200 and result["payload"]
    table = ops_hub.cli("method", "invoke", device(0), "unlockDoor", "-o", "table")
    assert table.returncode == 0 and "status" in table.stdout and "200" in table.stdout


def test_method_invoke_failures(ops_hub: OpsHub) -> None:
    unknown = ops_hub.cli("method", "invoke", device(0), "selfDestruct")
    assert unknown.returncode == 1 and '"status": 501' in unknown.stdout
    assert "status 501" in unknown.stderr
    bad = ops_hub.cli("method", "invoke", device(0), "lockDoor", "--payload", "{oops")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --payload is not valid JSON")
    assert ops_hub.json("device", "create", "offline-one")["deviceId"] == "offline-one"
    offline = ops_hub.cli("method", "invoke", "offline-one", "lockDoor", "--timeout", "5")
    assert offline.returncode == 1 and offline.stderr.startswith("error: DeviceNotOnline (404103)")
    assert offline.stderr.count("\n") == 1
