"""Crash safety at scale, small (issue 12 item 3): ``./scripts/soak --crash`` with 500 devices.

``kill -9`` of the hub mid-job and mid-burst of reported patches, on SQLite, on
PostgreSQL, and with two nodes (PostgreSQL + NATS; one node killed). After each kill:
every acknowledged write is present, the store is consistent, the job completed with
statistics equal to its device records, and no device was invoked twice. The same code
runs 10,000 devices in ``./scripts/soak --crash``.
"""

from __future__ import annotations

import json

import pytest

from tests.reliability.crash_scale import CrashConfig, run_crash

DEVICES = 500


@pytest.mark.timeout(900)  # two nodes: in-flight calls to the killed node wait out their 30 s response timeout
@pytest.mark.parametrize(("store", "nodes"), [("sqlite", 1), ("postgresql", 1), ("postgresql", 2)],
                         ids=["sqlite", "postgresql", "two-nodes"])
def test_kill_9_mid_job_and_mid_burst_loses_no_acknowledged_write(store: str, nodes: int) -> None:
    # Small job batches and concurrency, so that the kill finds records done, running and pending.
    config = CrashConfig(devices=DEVICES, store=store, nodes=nodes, job_batch_size=50, job_concurrency=50,
                         lease_seconds=2, timeout=300)  # a short lease: node b takes over sooner
    result = run_crash(config)
    summary = json.dumps(result, indent=1)
    print(summary)
    assert result["findings"] == [], summary
    job, burst = result["job_kill"], result["burst_kill"]
    assert 0 < job["invoked_at_kill"] < DEVICES, summary  # the kill really came mid-job
    assert job["job_status"] == "completed" and job["devices_invoked_twice"] == 0, summary
    assert job["records_by_status"].get("completed", 0) > 0, summary  # work went on after the restart
    assert burst["acknowledged_writes_checked"] >= 2 * DEVICES and burst["missing"] == 0, summary
    for check in (result["consistency_after_job_kill"], result["consistency_after_burst_kill"]):
        assert check["device_rows"] == DEVICES, summary
        assert check.get("integrity_check", "ok") == "ok", summary
    assert result["ok"], summary
