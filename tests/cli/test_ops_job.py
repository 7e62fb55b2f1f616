"""`iot-flows job ...` against a real hub with simulated devices, as subprocesses."""

from __future__ import annotations

from tests.cli.ops_support import OpsHub, device, ops_hub  # noqa: F401

TWO = f"deviceId IN ['{device(0)}', '{device(1)}']"


def test_method_job_wait_shows_progress_and_ends_completed(ops_hub: OpsHub) -> None:
    done = ops_hub.cli("job", "create-method", "lockDoor", "-q", TWO, "--payload", '{"by": "cli"}',
                       "--job-id", "cli-lock", "--wait")  # fmt: skip
    assert done.returncode == 0, done.stderr
    import json

    job = json.loads(done.stdout)
    assert job["jobId"] == "cli-lock" and job["status"] == "completed"
    assert job["deviceJobStatistics"]["succeededCount"] == 2
    assert "job cli-lock" in done.stderr and "2/2" in done.stderr and "2 succeeded, 0 failed" in done.stderr

    shown = ops_hub.json("job", "show", "cli-lock")
    assert shown["status"] == "completed" and shown["type"] == "scheduleDeviceMethod"
    listed = ops_hub.json("job", "list")
    assert "cli-lock" in {j["jobId"] for j in listed}
    table = ops_hub.cli("job", "list", "-o", "table")
    assert table.returncode == 0 and "cli-lock" in table.stdout and "jobId" in table.stdout
    records = ops_hub.json("query", "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'cli-lock'")
    assert sorted(r["deviceId"] for r in records) == [device(0), device(1)]


def test_twin_update_job(ops_hub: OpsHub) -> None:
    job = ops_hub.json("job", "create-twin-update", "-q", TWO, "--tags", '{"wing": "east"}', "--wait")
    assert job["status"] == "completed" and job["deviceJobStatistics"]["succeededCount"] == 2
    assert ops_hub.json("twin", "show", device(1))["tags"]["wing"] == "east"


def test_failed_devices_make_wait_exit_nonzero(ops_hub: OpsHub) -> None:
    done = ops_hub.cli("job", "create-method", "noSuchMethod", "-q", TWO, "--wait", "--timeout", "5")
    assert done.returncode == 1
    assert "2 devices failed" in done.stderr.splitlines()[-1]


def test_cancel_a_scheduled_job(ops_hub: OpsHub) -> None:
    job = ops_hub.json("job", "create-method", "reboot", "--job-id", "cli-later", "--start-time", "2099-01-01T00:00:00")
    assert job["jobId"] == "cli-later" and job["startTime"].startswith("2099-01-01T00:00:00")
    cancelled = ops_hub.json("job", "cancel", "cli-later")
    assert cancelled["status"] == "cancelled"
    shown = ops_hub.cli("job", "show", "cli-later", "--wait", "-o", "table")
    assert shown.returncode == 1 and "cancelled" in shown.stdout


def test_ctrl_c_while_waiting_says_the_job_goes_on_and_how_to_stop_it(ops_hub: OpsHub) -> None:
    # Found by a newcomer: Ctrl-C during --wait exited 130 saying nothing while the job ran on.
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "iot_flows.cli", "job", "create-method", "reboot", "--job-id",
                             "cli-waiting", "--start-time", "2099-01-01T00:00:00", "--wait"], cwd=ops_hub.folder,
                            env=ops_hub.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while ops_hub.cli("job", "show", "cli-waiting").returncode != 0:  # created: now following it
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert err.strip().splitlines()[-1] == (
            "interrupted: job cli-waiting (if created) goes on running on the hub; `iot-flows job show cli-waiting "
            "--wait` follows it, `iot-flows job cancel cli-waiting` stops it"), err
        assert ops_hub.json("job", "show", "cli-waiting")["status"] in ("queued", "scheduled")
    finally:
        if proc.poll() is None:
            proc.kill()
        ops_hub.cli("job", "cancel", "cli-waiting")


def test_job_bad_input_and_unknown_job(ops_hub: OpsHub) -> None:
    before = {j["jobId"] for j in ops_hub.json("job", "list")}
    for args in (["create-method", "reboot", "--payload", "{nope"], ["create-twin-update", "--desired", "nope"],
                 ["create-twin-update"]):  # fmt: skip
        done = ops_hub.cli("job", *args)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert {j["jobId"] for j in ops_hub.json("job", "list")} == before  # nothing created
    missing = ops_hub.cli("job", "show", "no-such-job")
    assert missing.returncode == 1 and missing.stderr.startswith("error: JobNotFound (404002)")


def test_job_list_table_shows_whole_job_ids_and_values_as_typed(ops_hub: OpsHub) -> None:
    # Found by a newcomer: the table cut long job ids ("nightly-firmware-…"), the one cell an
    # operator copies into `job show`; and a value like "[red]x" was read as console markup.
    job_id = "nightly-firmware-rollout-wave-3-2026-11-30-eu-west-canary"
    ops_hub.json("job", "create-method", "reboot", "--job-id", job_id, "--start-time", "2099-01-01T00:00:00",
                 "-q", "deviceId = '[red]not-markup'")  # fmt: skip
    table = ops_hub.cli("job", "list", "-o", "table", env={"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    assert job_id in table.stdout
    lines = table.stdout.splitlines()
    header = "\n".join(lines[: next(i for i, line in enumerate(lines) if line.startswith("┡"))])
    # the statistics' headers were all "deviceJo…"
    assert all(name in header for name in ("devices", "succeeded", "failed")) and "deviceJo" not in header, header
    shown = ops_hub.cli("job", "show", job_id, "-o", "table")
    assert shown.returncode == 0 and "deviceId = '[red]not-markup'" in shown.stdout, shown.stdout
    ops_hub.json("job", "cancel", job_id)
