"""``--max-connections``: past it a device's socket is closed at once, connected devices and
the REST API keep working, and a device gets in again once another one leaves."""

from __future__ import annotations

from pathlib import Path

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.support import Device, Service, wait_until


def test_devices_beyond_max_connections_are_refused_and_get_in_once_one_leaves(tmp_path: Path) -> None:
    settings = HubSettings(mqtt_port=0, http_port=0, db=str(tmp_path / "hub.db"), max_connections=2)
    with EmbeddedHub(settings) as running:
        svc = Service(running.base_url, running.connection_string())
        hub = running.hub
        devices = []
        for _ in range(3):
            created = svc.create_device()
            devices.append(Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, created["deviceId"],
                                  created["authentication"]["symmetricKey"]["primaryKey"]))  # fmt: skip
        first, second, third = devices
        try:
            assert first.connect() == 0 and second.connect() == 0
            assert third.connect(timeout=3) is None and third.disconnected.is_set()  # closed before any CONNACK
            assert hub.mqtt.refused >= 1
            assert svc.request("GET", f"/twins/{first.device_id}").status_code == 200
            third.client.loop_stop()
            first.client.disconnect()
            wait_until(lambda: hub.mqtt.connection_count == 1)
            assert third.connect() == 0
        finally:
            for device in devices:
                device.client.loop_stop()
                device.client.disconnect()
            svc.close()


def test_a_burst_of_sockets_gets_exactly_max_connections_in(tmp_path: Path) -> None:
    """The loop runs the protocol factory for every socket of an accept burst before any
    connection_made: counting there let 4 of 4 in past a limit of 2. Exactly the limit now."""
    import socket

    settings = HubSettings(mqtt_port=0, http_port=0, db=str(tmp_path / "hub.db"), max_connections=2)
    with EmbeddedHub(settings) as running:
        hub = running.hub
        socks = [socket.socket() for _ in range(8)]
        try:
            for sock in socks:
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", hub.mqtt_port))  # all at once: one accept burst
            wait_until(lambda: hub.mqtt.refused + hub.mqtt.connection_count == len(socks))
            assert hub.mqtt.connection_count == 2 and hub.mqtt.refused == len(socks) - 2
        finally:
            for sock in socks:
                sock.close()
        wait_until(lambda: hub.mqtt.connection_count == 0)


def test_a_tls_socket_that_never_completes_its_handshake_is_counted_then_dropped(tmp_path: Path) -> None:
    """An admitted TLS socket counts against the limit from accept on; if its handshake never
    completes, the CONNECT timeout drops it (and its descriptor), and another device gets in."""
    import socket

    from tests.tlsutil import make_test_pki

    pki = make_test_pki(tmp_path)
    settings = HubSettings(mqtt_port=0, http_port=0, mqtts_port=0, db=str(tmp_path / "hub.db"), max_connections=2,
                           tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with EmbeddedHub(settings) as running:
        hub = running.hub
        hub.mqtt.connect_timeout = 1.0
        silent = [socket.create_connection(("127.0.0.1", hub.mqtts_port)) for _ in range(2)]  # no ClientHello
        try:
            wait_until(lambda: hub.mqtt.connection_count == 2)
            with socket.create_connection(("127.0.0.1", hub.mqtts_port)):
                wait_until(lambda: hub.mqtt.refused == 1)
            wait_until(lambda: hub.mqtt.connection_count == 0, timeout=10)
            for sock in silent:  # the hub closed them: EOF
                sock.settimeout(10)
                assert sock.recv(1) == b""
        finally:
            for sock in silent:
                sock.close()
