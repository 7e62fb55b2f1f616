"""The operator verbs against a hub serving HTTPS: a self-signed ``--tls-cert`` is trusted
through the profile in the hub's folder, a CA-signed one with ``--ca-file`` (or
``IOT_FLOWS_HUB_CA_FILE``); without the right trust anchor a verb fails in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.ops_support import base_env
from tests.cli.test_readme_commands import Running, shim
from tests.tlsutil import make_test_pki


def _cli(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iot_flows.cli", *args], cwd=folder, env=env,
                          text=True, capture_output=True, timeout=120)  # fmt: skip


def _serve(folder: Path, env: dict[str, str], cert: Path, key: Path) -> Running:
    hub = Running(f".venv/bin/iot-flows hub serve --db hub.db --mqtts-port 0 --tls-cert {cert} --tls-key {key}",
                  folder, env)  # fmt: skip
    hub.wait_for(r"REST\s+: https://", timeout=60)
    return hub


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    shim(tmp_path)
    yield tmp_path, base_env(tmp_path)


def test_a_self_signed_hub_is_trusted_through_its_profile(folder: tuple[Path, dict[str, str]]) -> None:
    path, env = folder
    # What an operator types (openssl's self-signed certificate for this machine).
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "server-key.pem", "-out", "server.pem", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   cwd=path, check=True, capture_output=True)  # fmt: skip
    hub = _serve(path, env, path / "server.pem", path / "server-key.pem")
    try:
        profile = json.loads((path / ".iot-flows" / "hub.json").read_text())
        assert profile["ca_file"] == str((path / "server.pem").resolve())
        created = _cli(path, env, "device", "create", "tls-1", "-o", "json")
        assert created.returncode == 0, created.stderr
        listed = _cli(path, env, "device", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        assert [d["deviceId"] for d in json.loads(listed.stdout)] == ["tls-1"]
        # The fleet over TLS from the same folder: --tls (or --ca-file) takes the MQTTS port.
        for flags in (["--tls"], ["--ca-file", "server.pem"]):
            fleet = _cli(path, env, "fleet", "simulate", "--count", "3", "--prefix", "tls-fleet", "--duration", "1", *flags)
            assert fleet.returncode == 0 and "3/3 devices connected" in fleet.stderr, (flags, fleet.stderr)
        # The "or from anywhere" command the hub printed works from another folder as printed.
        anywhere = hub.wait_for(r"or from anywhere:\n  (.+)\n").group(1)
        assert "--ca-file" in anywhere, anywhere
        other = path / "elsewhere"
        other.mkdir()
        away = subprocess.run(f"{anywhere} --count 2 --prefix away --duration 1", shell=True, cwd=other, env=env,
                              text=True, capture_output=True, timeout=120)  # fmt: skip
        assert away.returncode == 0 and "2/2 devices connected" in away.stderr, away.stderr
    finally:
        hub.interrupt()


def test_a_ca_signed_hub_needs_the_ca_file_and_says_so_in_one_line(folder: tuple[Path, dict[str, str]]) -> None:
    path, env = folder
    pki = make_test_pki(path / "pki")
    hub = _serve(path, env, pki.server_cert, pki.server_key)
    try:
        assert json.loads((path / ".iot-flows" / "hub.json").read_text())["ca_file"] is None
        untrusted = _cli(path, env, "device", "list")
        assert untrusted.returncode == 1
        assert len(untrusted.stderr.strip().splitlines()) == 1 and "certificate" in untrusted.stderr.lower()

        flag = _cli(path, env, "device", "list", "--ca-file", str(pki.ca_cert), "-o", "json")
        assert flag.returncode == 0, flag.stderr
        assert json.loads(flag.stdout) == []
        by_env = _cli(path, {**env, "IOT_FLOWS_HUB_CA_FILE": str(pki.ca_cert)}, "query", "SELECT * FROM devices")
        assert by_env.returncode == 0, by_env.stderr

        missing = _cli(path, env, "device", "list", "--ca-file", str(path / "nope.pem"))
        assert missing.returncode == 2
        assert missing.stderr.strip() == f"error: --ca-file: no such file: {path / 'nope.pem'}"
    finally:
        hub.interrupt()
