"""Artifact keys, outcome lines and flat parameter overrides (what the Prefect UI shows)."""

from __future__ import annotations

import re

import pytest

from iot_flows.flows._ui import apply_overrides, artifact_key, outcome_line
from iot_flows.flows.rollout import RolloutRequest


def test_artifact_keys_are_what_prefect_accepts() -> None:
    assert artifact_key("rollout", "2.1.0") == "rollout-2-1-0"
    assert artifact_key("method-job", "lockDoor") == "method-job-lockdoor"
    assert artifact_key("fleet-by", "tags.building") == "fleet-by-tags-building"
    assert artifact_key("read-property", "firmware.currentFwVersion") == "read-property-firmware-currentfwversion"
    for key in ("rollout-2-1-0", artifact_key("x", "A b_c/D  e", None, "")):
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", key), key


def test_outcome_lines_count_by_outcome() -> None:
    assert outcome_line(10, 0, 10) == "10 done: 0 succeeded, 10 failed"
    assert outcome_line(12, 9, 1, timed_out=2, canceled=0) == "12 done: 9 succeeded, 1 failed, 2 timed out"


def test_a_flat_override_replaces_one_field_and_is_validated() -> None:
    request = RolloutRequest(package_uri="https://x/fw-2.1.0.bin", version="2.1.0", waves=[1, 100])
    changed = apply_overrides(request, version="2.2.0", target_condition=None)
    assert changed.version == "2.2.0" and changed.package_uri == request.package_uri and changed.waves == [1, 100]
    assert apply_overrides(request) is request
    with pytest.raises(ValueError, match=r"invalid parameter override \(version: "):
        apply_overrides(request, version=["not", "a", "string"])


async def test_zero_targets_say_so_and_min_devices_fails(connection) -> None:
    from iot_flows.flows._ui import TooFewDevicesError
    from iot_flows.flows.jobs import MethodJobRequest, run_method_job

    request = MethodJobRequest(method_name="lockDoor", query_condition="tags.building = 'nowhere'")
    state = await run_method_job(request, connection, return_state=True)
    assert state.is_completed() and state.message == "0 devices matched tags.building = 'nowhere'"
    assert (await state.result()).device_count == 0
    with pytest.raises(TooFewDevicesError, match=r"0 devices matched tags.building = 'nowhere'; lockDoor needs at least 1"):
        await run_method_job(request, connection, min_devices=1)
