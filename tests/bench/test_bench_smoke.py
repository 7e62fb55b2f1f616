"""``./scripts/bench`` at tiny sizes, so that the harness cannot rot.

Runs ``python -m bench.run`` (what ``scripts/bench`` runs) with a handful of devices and
twins, then checks the JSON's shape, that every baseline ran in the same run (Mosquitto
with the same fleet, raw SQL on the same database), and the readable table. Speed is not
asserted here: the figures are the benchmark's output, not test conditions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _mosquitto() -> None:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto not found (the bench's baseline broker): apt-get install mosquitto", pytrace=False)


@pytest.mark.timeout(300)
def test_tiny_bench_run_writes_json_and_table_with_baselines(tmp_path: Path) -> None:
    _mosquitto()
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--devices", "8,12", "--store", "sqlite", "--nodes", "1",
         "--tls-devices", "4", "--twins", "500",
         "--repeat", "1", "--calls", "10", "--rounds", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["sizes"] == [8, 12]
    assert len(result["hub"]["12"]["method_job_over_mosquitto"]["per_round"]) == 2
    for n in ("8", "12"):
        hub, broker = result["hub"][n], result["mosquitto"][n]
        assert hub["method_job"]["statistics"]["succeededCount"] == int(n)
        assert broker["round_trips"]["per_second"] > 0  # the baseline ran on the same fleet code
        assert broker["round_trip_ms"]["n"] == 10 and hub["rest_method_ms"]["n"] == 10
        assert hub["reported_patch_per_second"] > 0
        assert hub["confirm_twins"]["devices"] == int(n) and hub["confirm_twins"]["get_seconds"] > 0
        for side in (hub, broker):
            assert side["connects_per_second"] > 0
            assert all(v > 0 for v in side["peak_rss_mb"].values())
    assert result["tls"]["devices"] == 4 and "mosquitto_kb_per_device" in result["tls"]
    queries = result["queries"]
    assert "error" not in queries, queries
    for backend in ("sqlite", "postgresql"):
        assert queries[backend]["raw_group_by"] > 0  # the raw-SQL baseline ran on the same database
    assert set(result["slopes_per_1000_devices"]) >= {"job seconds", "hub KB/device"}
    table = out.with_suffix(".md").read_text()
    assert "scheduleDeviceMethod job" in table and "| 12 |" in table


@pytest.mark.timeout(300)
def test_tiny_bench_run_on_both_stores_and_two_nodes_with_their_baselines(tmp_path: Path) -> None:
    """``--store sqlite,postgresql --nodes 1,2``: every store runs one node (with Mosquitto)
    and two nodes (one NATS, devices half on each), each two-node figure next to one node."""
    _mosquitto()
    out = tmp_path / "bench.json"
    profile = ROOT / ".iot-flows" / "hub.json"  # a user's own hub in this folder (found by a newcomer:
    before = profile.read_bytes() if profile.exists() else None  # the PostgreSQL hubs overwrote it)
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--devices", "6", "--store", "sqlite,postgresql", "--nodes", "1,2",
         "--tls-devices", "0", "--twins", "0", "--calls", "4", "--rounds", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (profile.read_bytes() if profile.exists() else None) == before, "the bench replaced ./.iot-flows/hub.json"
    result = json.loads(out.read_text())
    assert result["stores"] == ["sqlite", "postgresql"] and result["nodes"] == [1, 2]
    assert result["hub"]["6"]["method_job"]["statistics"]["succeededCount"] == 6  # one node, sqlite
    one_nodes = {"sqlite": result["hub"]["6"], "postgresql": result["by_store"]["postgresql"]["hub"]["6"]}
    assert result["by_store"]["postgresql"]["mosquitto"]["6"]["round_trips"]["per_second"] > 0
    for store in ("sqlite", "postgresql"):
        assert one_nodes[store]["method_job"]["statistics"]["succeededCount"] == 6
        two = result["two_nodes"][store]["6"]
        assert two["devices_per_node"] == {"a": 3, "b": 3}
        assert two["method_job"]["statistics"]["succeededCount"] == 6  # calls to node b's devices crossed NATS
        assert two["rest_method_same_node_ms"]["n"] == 4 and two["rest_method_cross_node_ms"]["n"] == 4
        assert two["reported_patch_per_second"] > 0 and two["connects_per_second"] > 0
        assert set(two["hub_kb_per_device"]) == {"a", "b"}
        assert set(two["peak_rss_mb"]) == {"hub_a", "hub_b", "fleet_a", "fleet_b", "nats"}
        assert all(v > 0 for v in two["peak_rss_mb"].values())
        vs = two["against_baselines"]
        assert vs["job_two_over_one_node"] == round(
            two["method_job"]["devices_per_second"] / one_nodes[store]["method_job"]["devices_per_second"], 3)
        assert vs["job_two_nodes_over_mosquitto"] and vs["reported_patch_two_over_one_node"]
        assert vs["method_p50_cross_over_same_node"] and vs["connects_two_over_one_node"]
    table = out.with_suffix(".md").read_text()
    for heading in ("### one node, sqlite", "### one node, postgresql", "### two nodes, sqlite", "### two nodes, postgresql"):
        assert heading in table
    assert "device on node b (NATS)" in table


def test_refuses_a_fleet_beyond_the_open_files_limit(tmp_path: Path) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no open-files limit here")
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--devices", str(hard + 1), "--out", str(tmp_path / "x.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "open files" in done.stderr and "fewer devices" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_refuses_an_unknown_store_or_topology_before_starting(tmp_path: Path) -> None:
    for option, value in (("--store", "sqlite,mysql"), ("--nodes", "1,3")):
        done = subprocess.run(
            [sys.executable, "-m", "bench.run", "--devices", "4", option, value, "--out", str(tmp_path / "x.json")],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode != 0
        assert f"bench: {option} takes a comma-separated list of" in done.stderr, done.stderr
        assert not (tmp_path / "x.json").exists()
