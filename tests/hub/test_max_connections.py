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
