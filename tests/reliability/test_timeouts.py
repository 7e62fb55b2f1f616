"""Server-side idle and keep-alive limits (Azure IoT Hub MQTT doc, "Default keep-alive timeout").

Azure times a device out at 1.5x its keep-alive but never later than 1,767 s, so a device
that asks for keep-alive 0 ("none") or 3600 s and then stays silent is closed after 1,767 s.
The long limits are tested with an injected clock: the hub's MQTT server reads time from
``hub.mqtt.clock``, which these tests move forward instead of sleeping for 30 minutes.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from iot_flows._sas import generate_sas_token
from iot_flows.hub._mqtt_server import MAX_KEEP_ALIVE, idle_limit
from iot_flows.mqtt import Connect, PacketReader, Pingreq, encode


class FakeClock:
    """A monotonic clock the test moves forward by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def clock(own_hub):
    hub = own_hub.hub
    fake = FakeClock()
    real = hub.mqtt.clock
    own_hub.call_soon(setattr, hub.mqtt, "clock", fake)
    yield fake
    own_hub.call_soon(setattr, hub.mqtt, "clock", real)


def _connect(own_hub, own_service, keep_alive: int) -> socket.socket:
    hub = own_hub.hub
    record = own_service.create_device()
    device_id, key = record["deviceId"], record["authentication"]["symmetricKey"]["primaryKey"]
    sock = socket.create_connection(("127.0.0.1", hub.mqtt_port), timeout=5)
    password = generate_sas_token(f"{hub.settings.hostname}/devices/{device_id}", key).encode()
    sock.sendall(encode(Connect(client_id=device_id, username=f"{hub.settings.hostname}/{device_id}/?api-version=2021-04-12",
                                password=password, clean_session=False, keep_alive=keep_alive)))
    packets = PacketReader().feed(sock.recv(4))
    assert packets and packets[0].return_code == 0
    return sock


def _closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the hub closes the socket within ``timeout`` real seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(1024):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_idle_limit_is_one_and_a_half_keep_alive_capped_at_azures_1767_seconds():
    assert MAX_KEEP_ALIVE == 1767
    assert idle_limit(60) == 90
    assert idle_limit(1177) == pytest.approx(1765.5)  # the useful client maximum
    assert idle_limit(1740) == 1767  # the Python SDK's maximum: capped
    assert idle_limit(3600) == 1767
    assert idle_limit(0) == 1767  # "no keep-alive" is not "forever"


@pytest.mark.parametrize("keep_alive", [0, 3600, 65535])
def test_silent_device_is_closed_after_1767_seconds(own_hub, own_service, clock, keep_alive):
    sock = _connect(own_hub, own_service, keep_alive)
    clock.advance(1766)
    assert not _closed_within(sock, 1.5), "closed before Azure's 1,767 s cap"
    clock.advance(2)
    assert _closed_within(sock, 3), f"keep-alive {keep_alive}: still open after 1,768 s of silence"
    sock.close()


def test_device_that_pings_stays_connected_past_the_cap(own_hub, own_service, clock):
    sock = _connect(own_hub, own_service, 0)
    for _ in range(3):  # 3 x 1,000 s of fake time, each ended by a PINGREQ
        clock.advance(1000)
        sock.sendall(encode(Pingreq()))
        sock.settimeout(3)
        assert sock.recv(2) == b"\xd0\x00"  # PINGRESP
    assert not _closed_within(sock, 1.0)
    sock.close()


def test_keep_alive_below_the_cap_uses_one_and_a_half_times(own_hub, own_service, clock):
    sock = _connect(own_hub, own_service, 60)
    clock.advance(89)
    assert not _closed_within(sock, 1.5)
    clock.advance(2)
    assert _closed_within(sock, 3)
    sock.close()


def test_socket_without_connect_is_closed_after_the_connect_timeout(own_hub, clock):
    sock = socket.create_connection(("127.0.0.1", own_hub.hub.mqtt_port), timeout=5)
    time.sleep(0.2)  # accepted and registered
    clock.advance(own_hub.hub.mqtt.connect_timeout + 1)
    assert _closed_within(sock, 3)
    sock.close()


# ---- HTTP ---------------------------------------------------------------------------------


def _http_socket(own_hub) -> socket.socket:
    return socket.create_connection(("127.0.0.1", own_hub.hub.http_port), timeout=5)


def test_http_connection_idle_after_a_response_is_closed_by_the_keep_alive_timeout(own_hub):
    sock = _http_socket(own_hub)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
    assert b"200 OK" in sock.recv(65536)
    assert _closed_within(sock, 8)  # uvicorn's 5 s keep-alive, far below Azure's 4-minute idle timeout
    sock.close()


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: hub\r\n"], ids=["silent", "partial-headers"])
def test_http_connection_without_complete_request_headers_is_closed(own_hub, sent):
    """Found by this test: uvicorn held such sockets forever (slowloris); now 10 s."""
    from iot_flows.hub.api._http_timeouts import REQUEST_HEADER_TIMEOUT

    sock = _http_socket(own_hub)
    sock.sendall(sent)
    start = time.monotonic()
    assert _closed_within(sock, REQUEST_HEADER_TIMEOUT + 5)
    assert time.monotonic() - start >= REQUEST_HEADER_TIMEOUT - 1  # not closed early either
    sock.close()


def test_slow_request_after_complete_headers_is_not_cut(own_hub, own_service):
    """The header timer only guards the headers: a request being answered is left alone."""
    sock = _http_socket(own_hub)
    body = b'{"deviceId": "slow-body-device"}'
    sock.sendall(b"PUT /devices/slow-body-device?api-version=2021-04-12 HTTP/1.1\r\nHost: hub\r\n"
                 b"Content-Type: application/json\r\nAuthorization: " + own_service.cs.token().encode() +
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    time.sleep(11)  # past the header timeout, body not sent yet
    sock.sendall(body)
    assert b"200 OK" in sock.recv(65536)
    sock.close()


def test_mqtt_over_websocket_is_not_cut_by_the_http_header_timeout(own_hub, own_service):
    from iot_flows.hub.api._http_timeouts import REQUEST_HEADER_TIMEOUT
    from tests.hub.test_mqtt_websocket import _ws_device

    dev = _ws_device(own_hub.hub, own_service.create_device(), port=own_hub.hub.http_port)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    time.sleep(REQUEST_HEADER_TIMEOUT + 2)
    assert not dev.disconnected.is_set()
    assert dev.get_twin()[0] == 200
    dev.disconnect()
