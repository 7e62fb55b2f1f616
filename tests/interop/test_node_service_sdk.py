"""Interop: the OFFICIAL Azure IoT Node *service* SDK (azure-iothub 1.16.6) against the hub over
HTTPS with a test CA: registry (incl. ``GET /devices/`` with its trailing slash), twins with
``If-Match``, queries, and jobs (the PUT answer of a job scheduled an hour ahead says
``queued``). The script only points the SDK's HTTPS agent at the hub's port (see
``node/service.js``); everything on the wire is the SDK's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from iot_flows.hub._embedded import EmbeddedHub
from tests.interop.conftest import NODE_DIR
from tests.tlsutil import TestPki

pytestmark = pytest.mark.interop
SCRIPT = NODE_DIR / "service.js"


@pytest.fixture(scope="module")
def service_sdk(node_bin: str) -> str:
    if not (NODE_DIR / "node_modules" / "azure-iothub" / "package.json").is_file():
        pytest.skip("tests/interop/node/node_modules/azure-iothub is missing: run `npm install` in tests/interop/node")
    return node_bin


def _run(node: str, hub: EmbeddedHub, pki: TestPki, device_id: str) -> tuple[int, dict[str, dict], str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env.update(INTEROP_CONNECTION_STRING=hub.connection_string(), INTEROP_CA_FILE=str(pki.ca_cert),
               INTEROP_HTTPS_PORT=str(hub.hub.http_port), INTEROP_DEVICE_ID=device_id)
    proc = subprocess.run([node, str(SCRIPT)], cwd=str(NODE_DIR), env=env, capture_output=True, text=True, timeout=120)
    steps: dict[str, dict] = {}
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        steps[event.get("step", event["event"])] = event
    return proc.returncode, steps, f"\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"


def test_node_service_sdk_registry_twins_queries_jobs(service_sdk: str, tls_hub: EmbeddedHub, interop_pki: TestPki) -> None:
    device_id = f"node-svc-{uuid.uuid4().hex[:8]}"
    code, steps, output = _run(service_sdk, tls_hub, interop_pki, device_id)
    assert code == 0 and "done" in steps, output
    assert steps["create"]["deviceId"] == device_id and steps["create"]["status"] == "enabled", output
    assert steps["list"]["httpStatus"] == 200 and device_id in steps["list"]["ids"], output  # issue 16 item 1
    assert steps["twin-update"]["tags"] == {"site": "interop"} and steps["twin-update"]["desired"] == "eco", output
    assert steps["update-twin-any-etag"]["tags"] == {"site": "interop", "row": 3}, output
    assert steps["query"]["ids"] == [device_id] and steps["query"]["hasMoreResults"] is False, output
    assert steps["schedule-later"]["status"] == "queued", output  # issue 16 item 2
    assert steps["get-later"]["status"] == "scheduled", output
    assert steps["schedule-later"]["jobId"] in steps["query-jobs"]["ids"], output
    assert steps["cancel-later"]["status"] == "cancelled", output
    assert steps["schedule-now"]["status"] == "queued", output
    assert steps["job-completed"]["status"] == "completed", output
    assert steps["job-completed"]["stats"]["succeededCount"] == 1, output
    assert steps["delete"]["httpStatus"] == 204, output


def test_the_pinned_service_sdk_is_the_one_installed(service_sdk: str) -> None:
    """Control: the script runs the SDK version package.json pins."""
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["azure-iothub"]
    installed = json.loads((NODE_DIR / "node_modules" / "azure-iothub" / "package.json").read_text())["version"]
    assert installed == pinned
