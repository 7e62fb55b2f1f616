"""The device client's lifecycle table and its one error path, against the real hub.

A small TCP proxy between client and hub (real sockets) lets a test hold the hub's
answers, cut the connection, and refuse new connections at chosen moments.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from typing import Any

import pytest

from iot_flows._exceptions import ConnectionLostError, RequestTimeoutError, TransportError, UnauthorizedError
from iot_flows._sas import generate_key
from iot_flows.device import TRANSITIONS, Backoff, DeviceClient, Event, IllegalTransition, State
from iot_flows.device._lifecycle import ONLINE, Lifecycle
from iot_flows.hub._embedded import EmbeddedHub
from tests.device.conftest import eventually


# ---- the table ------------------------------------------------------------------------
@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS, key=lambda k: (k[0].value, k[1].value)))
def test_every_allowed_transition(state: State, event: Event) -> None:
    lifecycle = Lifecycle(state)
    assert lifecycle.can(event)
    assert lifecycle.fire(event) is TRANSITIONS[(state, event)]
    assert lifecycle.state is TRANSITIONS[(state, event)]


REFUSED = [pair for pair in itertools.product(State, Event) if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), REFUSED)
def test_every_other_transition_raises(state: State, event: Event) -> None:
    lifecycle = Lifecycle(state)
    assert not lifecycle.can(event)
    with pytest.raises(IllegalTransition, match=event.value):
        lifecycle.fire(event)
    assert lifecycle.state is state  # unchanged


def test_the_table_is_connected_and_sane() -> None:
    # A few refusals spelled out: no request can make a refused device ready again by
    # itself, nothing is established without connecting, a closed client stays closed.
    assert (State.FAILED, Event.RETRY) not in TRANSITIONS
    assert (State.DISCONNECTED, Event.ESTABLISHED) not in TRANSITIONS
    assert (State.DISCONNECTED, Event.RETRY) not in TRANSITIONS
    assert (State.RECONNECTING, Event.RENEW) not in TRANSITIONS
    # Every state is reachable from DISCONNECTED, and every state can be closed.
    reachable, frontier = {State.DISCONNECTED}, [State.DISCONNECTED]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(State)
    assert all((s, Event.CLOSE) in TRANSITIONS for s in State if s is not State.DISCONNECTED)
    assert ONLINE == {State.READY, State.RENEWING}


# ---- a proxy the tests control ----------------------------------------------------------
class Proxy:
    """Forwards 127.0.0.1:port to the hub's MQTT port; can hold, cut and refuse."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.flowing = asyncio.Event()  # hub -> device bytes pass while set
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop accepting (new connections are refused); open ones keep working."""
        assert self._server is not None
        self._server.close()
        self._server = None

    def cut(self) -> None:
        """Reset every open connection."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        if self._server is not None:
            await self.refuse()
        self.cut()
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        hub_reader, hub_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, hub_writer]
        for pump in (self._pump(reader, hub_writer, hold=False), self._pump(hub_reader, writer, hold=True)):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool) -> None:
        try:
            while data := await reader.read(65536):
                if hold:
                    await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def proxy(embedded_hub: EmbeddedHub) -> Any:
    p = Proxy(embedded_hub.hub.mqtt_port)
    await p.listen()
    yield p
    await p.close()


# ---- the one error path -----------------------------------------------------------------
async def test_connack_refusal_is_final_without_a_retry_loop(make_client: Any, proxy: Proxy) -> None:
    client: DeviceClient = await make_client(key=generate_key(), port=proxy.port, backoff=Backoff(initial=0.05))
    with pytest.raises(UnauthorizedError, match="CONNACK 5"):
        await client.connect(retry=True)  # retry=True: transient failures only
    assert client.state is State.FAILED and not client.connected
    await asyncio.sleep(0.5)
    assert proxy.accepted == 1  # one CONNECT, no retry loop, no background reconnect
    with pytest.raises(UnauthorizedError):
        await client.get_twin()  # the refusal, at once
    with pytest.raises(UnauthorizedError):
        await client.wait_connected(1)
    await client.disconnect()
    assert client.state is State.DISCONNECTED


async def test_drop_fails_pending_requests_then_reconnects(make_client: Any, proxy: Proxy) -> None:
    client: DeviceClient = await make_client(port=proxy.port, backoff=Backoff(initial=0.1, maximum=0.3))
    online: list[bool] = []
    client.on_connection_change(online.append)
    async with client:
        assert client.state is State.READY
        proxy.flowing.clear()  # the hub's answers are held back...
        pending = [asyncio.create_task(client.get_twin(timeout=30)) for _ in range(3)]
        await eventually(lambda: asyncio.sleep(0, client.pending_requests == 3))
        proxy.cut()  # ...and the connection drops
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, ConnectionLostError) for r in results), results
        assert client.pending_requests == 0
        assert client.state in (State.RECONNECTING, State.READY)
        proxy.flowing.set()
        await client.wait_connected(10)
        assert client.state is State.READY
        assert client.reconnects == 1 and client.token_renewals == 0
        assert online == [True, False, True]
        assert proxy.accepted == 2
        await client.get_twin()


async def test_renewal_failure_goes_through_reconnect(make_client: Any, proxy: Proxy) -> None:
    client: DeviceClient = await make_client(port=proxy.port, token_ttl=4, backoff=Backoff(initial=0.1, maximum=0.3))
    online: list[bool] = []
    client.on_connection_change(online.append)
    async with client:
        await proxy.refuse()  # the renewal's new connection will be refused
        await eventually(lambda: asyncio.sleep(0, client.state is State.RECONNECTING), timeout=10)
        assert time.time() < client.token_expiry  # the renewal failed, not the hub's expiry drop
        assert client.token_renewals == 0
        assert online == [True, False]  # a failed renewal is reported as going offline
        waiting = asyncio.create_task(client.patch_reported({"after": "renewal"}, timeout=20))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # requests wait for the reconnect
        await proxy.listen()  # the hub is reachable again (same port)
        assert await waiting >= 1
        assert client.state is State.READY
        assert client.reconnects == 1
        assert online == [True, False, True]


async def test_renewal_is_invisible_to_listeners(make_client: Any, proxy: Proxy) -> None:
    client: DeviceClient = await make_client(port=proxy.port, token_ttl=3)
    online: list[bool] = []
    client.on_connection_change(online.append)
    async with client:
        await eventually(lambda: asyncio.sleep(0, client.token_renewals >= 1), timeout=10)
        assert client.state is State.READY and client.reconnects == 0
        assert online == [True]
        assert proxy.accepted == 2


async def test_disconnect_while_reconnecting_stops_it(make_client: Any, proxy: Proxy) -> None:
    client: DeviceClient = await make_client(port=proxy.port, backoff=Backoff(initial=0.2, maximum=0.2))
    await client.connect()
    await proxy.refuse()
    proxy.cut()
    await eventually(lambda: asyncio.sleep(0, client.state is State.RECONNECTING))
    waiting = asyncio.create_task(client.get_twin(timeout=10))
    await asyncio.sleep(0.05)
    await client.disconnect()
    assert client.state is State.DISCONNECTED
    with pytest.raises(ConnectionLostError):
        await waiting
    accepted = proxy.accepted
    await proxy.listen()
    await asyncio.sleep(0.6)
    assert proxy.accepted == accepted  # no attempt after disconnect()
    await client.connect()  # an explicit connect works again
    assert client.state is State.READY
    await client.disconnect()


# ---- timeouts are the project's errors ----------------------------------------------------
async def test_device_timeouts_raise_request_timeout_error(make_client: Any, proxy: Proxy) -> None:
    client: DeviceClient = await make_client(port=proxy.port)
    async with client:
        proxy.flowing.clear()
        for call in (
            client.get_twin(timeout=0.3),
            client.patch_reported({"x": 1}, timeout=0.3),
            client.send_telemetry({"t": 1}, timeout=0.3),
        ):
            with pytest.raises(RequestTimeoutError) as caught:
                await call
            assert isinstance(caught.value, TransportError) and isinstance(caught.value, TimeoutError)
            assert client.device_id in str(caught.value)
        proxy.flowing.set()


async def test_wait_connected_times_out_with_request_timeout_error(make_client: Any, proxy: Proxy) -> None:
    client: DeviceClient = await make_client(port=proxy.port, backoff=Backoff(initial=5, maximum=5, jitter=0))
    await client.connect()
    proxy.cut()
    await eventually(lambda: asyncio.sleep(0, client.state is State.RECONNECTING))
    with pytest.raises(RequestTimeoutError, match="not connected within"):
        await client.wait_connected(0.2)
    await client.disconnect()


# ---- import hygiene -------------------------------------------------------------------
def test_importing_the_device_side_does_not_load_the_server_stack() -> None:
    code = (
        "import sys, iot_flows.device; "
        "print(sorted(m for m in ('uvicorn', 'starlette', 'fastapi', 'lark', 'iot_flows.hub', 'prefect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
