"""Benchmark: connect N simulated devices to a bundled hub; print JSON.

    .venv/bin/python bench/bench_fleet.py --count 1000
    .venv/bin/python bench/bench_fleet.py --count 10000
    .venv/bin/python bench/bench_fleet.py --count 1000 --tls

The hub runs in its own process (``iot-flows hub serve``, SQLite in a temp dir) so that
the simulator's memory is measured alone: RSS of this process before the devices are
created (after provisioning) and after all are connected, divided by the count. The
hub's RSS is read from /proc as well. Connect rate = devices / seconds from the first
CONNECT to the last device ready (connected, subscribed, twin fetched and reconciled,
initial state reported).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iot_flows._sas import ConnectionString, generate_key  # noqa: E402
from iot_flows.device import BehaviourConfig, Fleet, provision_devices  # noqa: E402


def rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for localhost/127.0.0.1 (for --tls)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(validity[0]).not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(validity[0]).not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "hub.pem", directory / "hub.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def start_hub(tmp: str, owner_key: str, tls: tuple[Path, Path, Path] | None) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start ``iot-flows hub serve``; return (process, device port, REST base URL)."""
    mqtt_port, http_port, mqtts_port = free_port(), free_port(), free_port()
    env = {**os.environ, "IOT_FLOWS_HUB_OWNER_KEY": owner_key, "IOT_FLOWS_HUB_PROFILE": f"{tmp}/hub.json"}
    cmd = [
        sys.executable, "-c", "from iot_flows.cli._main import main; main()", "hub", "serve",
        "--mqtt-port", str(mqtt_port), "--http-port", str(http_port), "--db", f"{tmp}/hub.db",
    ]  # fmt: skip
    if tls is not None:
        cmd += ["--mqtts-port", str(mqtts_port), "--tls-cert", str(tls[1]), "--tls-key", str(tls[2])]
    base_url = f"{'https' if tls else 'http'}://127.0.0.1:{http_port}"
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hub exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            verify: bool | str = str(tls[0]) if tls else True
            if httpx.get(f"{base_url}/healthz", timeout=1, verify=verify).status_code == 200:
                return proc, (mqtts_port if tls else mqtt_port), base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("hub did not start")


async def run(
    args: argparse.Namespace, hub_pid: int, cs: str, mqtt_port: int, http_url: str, ca_file: str | None
) -> dict[str, object]:
    ids = [f"bench-{i:05d}" for i in range(args.count)]
    provisioned = await provision_devices(cs, ids, base_url=http_url, verify=ca_file or True)
    hub_rss_before = rss_kb(hub_pid)
    fleet = Fleet(
        cs,
        count=args.count,
        prefix="bench",
        mqtt_host="127.0.0.1",
        mqtt_port=mqtt_port,
        http_url=http_url,
        tls=ca_file is not None,
        ca_file=ca_file,
        provision=False,
        connect_concurrency=args.concurrency,
        behaviour=BehaviourConfig(report_initial_state=not args.no_initial_report),
    )
    gc.collect()
    rss_before = rss_kb()
    cpu_before, hub_cpu_before = cpu_seconds(), cpu_seconds(hub_pid)
    started = time.perf_counter()
    stats = await fleet.start(timeout=args.timeout)
    connect_seconds = time.perf_counter() - started
    cpu_connect, hub_cpu_connect = cpu_seconds() - cpu_before, cpu_seconds(hub_pid) - hub_cpu_before
    gc.collect()
    rss_after = rss_kb()
    hub_rss_after = rss_kb(hub_pid)
    # Hold the fleet briefly: every device stays connected (keep-alive) and answers.
    await asyncio.sleep(args.hold)
    held = fleet.connected
    method_rate = None
    if args.methods:
        async with httpx.AsyncClient(base_url=http_url, timeout=60, verify=ca_file or True) as http:
            parsed = ConnectionString.parse(cs)
            sem = asyncio.Semaphore(32)

            async def call(i: int) -> int:
                async with sem:
                    r = await http.post(
                        f"/twins/{ids[(i * 7919) % len(ids)]}/methods?api-version=2021-04-12",
                        json={"methodName": "lockDoor", "payload": None, "responseTimeoutInSeconds": 30},
                        headers={"Authorization": parsed.token()},
                    )
                    return int(r.json().get("status", 0)) if r.status_code == 200 else -r.status_code

            t0 = time.perf_counter()
            results = await asyncio.gather(*(call(i) for i in range(args.methods)))
            method_rate = round(args.methods / (time.perf_counter() - t0), 1)
            assert all(code == 200 for code in results), sorted(set(results))
    t0 = time.perf_counter()
    await fleet.stop()
    stop_seconds = time.perf_counter() - t0
    return {
        "count": args.count,
        "transport": "mqtt+tls" if ca_file else "mqtt",
        "connected": stats.connected,
        "held_after_seconds": {"seconds": args.hold, "connected": held},
        "failed": stats.failed,
        "provision_seconds": round(provisioned.seconds, 3),
        "provision_calls": provisioned.calls,
        "connect_seconds": round(connect_seconds, 3),
        "devices_connected_per_second": round(args.count / connect_seconds, 1),
        "connect_concurrency": args.concurrency,
        "connect_cpu_seconds": {"simulator": round(cpu_connect, 2), "hub": round(hub_cpu_connect, 2)},
        "initial_state_reported": not args.no_initial_report,
        "simulator_rss_mb_before": round(rss_before / 1024, 1),
        "simulator_rss_mb_after": round(rss_after / 1024, 1),
        "simulator_rss_kb_per_device": round((rss_after - rss_before) / max(1, args.count), 2),
        "hub_rss_mb_before": round(hub_rss_before / 1024, 1),
        "hub_rss_mb_after": round(hub_rss_after / 1024, 1),
        "hub_rss_kb_per_device": round((hub_rss_after - hub_rss_before) / max(1, args.count), 2),
        "lockdoor_calls_per_second": method_rate,
        "stop_seconds": round(stop_seconds, 3),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=256, help="devices connecting at once")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds to hold the fleet connected")
    parser.add_argument("--methods", type=int, default=500, help="lockDoor calls through REST (0: none)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--no-initial-report", action="store_true", help="skip the first reported patch")
    parser.add_argument("--tls", action="store_true", help="MQTT over TLS (hub with a generated test CA)")
    args = parser.parse_args()
    owner_key = generate_key()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        tls = make_certificates(Path(tmp)) if args.tls else None
        hub, mqtt_port, base_url = start_hub(tmp, owner_key, tls)
        try:
            cs = str(ConnectionString(host_name="127.0.0.1", shared_access_key_name="iothubowner", shared_access_key=owner_key))
            result = asyncio.run(run(args, hub.pid, cs, mqtt_port, base_url, str(tls[0]) if tls else None))
        finally:
            hub.send_signal(signal.SIGINT)
            try:
                hub.wait(30)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait()
            if hub.stderr is not None:
                hub.stderr.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
