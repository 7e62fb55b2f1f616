"""The keep-alive sweep as a deadline heap (issue 13): a device that keeps talking within
1.5x its keep-alive is re-armed and stays, however many times its first deadline passes;
a silent one next to it is still closed at 1.5x (MQTT 3.1.1 §3.1.2.10)."""

from __future__ import annotations

import socket
import time

from iot_flows.mqtt import Pingreq, encode
from tests.hub.test_mqtt_connect import _closed_by_peer, _raw_connect


def test_a_pinging_device_is_re_armed_while_a_silent_one_is_closed(embedded_hub, service):
    hub = embedded_hub.hub
    keys = []
    for _ in range(2):
        record = service.create_device()
        keys.append((record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"]))
    talking = _raw_connect(hub, *keys[0], keep_alive=1)
    silent = _raw_connect(hub, *keys[1], keep_alive=1)
    start = time.monotonic()
    closed_after = None
    talking.settimeout(2)
    while time.monotonic() - start < 4.0:  # about three of its 1.5 s deadlines
        talking.sendall(encode(Pingreq()))
        assert talking.recv(2) == b"\xd0\x00", "the pinging device lost its connection"
        if closed_after is None:
            if _closed_by_peer(silent, timeout=0.5):
                closed_after = time.monotonic() - start
        else:
            time.sleep(0.4)
    assert closed_after is not None and 1.4 <= closed_after <= 3.5, closed_after
    talking.sendall(encode(Pingreq()))
    assert talking.recv(2) == b"\xd0\x00"
    for sock in (talking, silent):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
