"""The demo's simulated fleet, in its own process.

Every connected device holds a socket in the fleet and one in the hub. In one process a
10,000-device demo needs 20,000+ descriptors, past a common ``ulimit -n`` of 20,000; in
two processes each needs ~10,000. The child is spawned (no fork: the parent has threads)
and talks over a pipe: it sends ``("started", stats, connect_seconds)`` or ``("error",
text)``, waits for ``"stop"`` (or the pipe closing: the parent died), disconnects every
device and sends ``("stopped", stats)``. It ignores Ctrl-C, which reaches the whole
process group: the parent decides when the fleet stops.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from multiprocessing.connection import Connection
from typing import Any

from iot_flows.device import Fleet, FleetStats

__all__ = ["FleetProcess"]


class FleetProcess:
    """``Fleet(**fleet_kwargs)`` started in a child process; :meth:`started`, then :meth:`stop`."""

    def __init__(self, connection_string: str, **fleet_kwargs: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child, args=(child, connection_string, fleet_kwargs), name="iot-flows-demo-fleet", daemon=True
        )
        self._proc.start()
        child.close()
        self.connect_seconds: float | None = None
        self._stopped = False

    async def started(self, timeout: float = 330.0) -> FleetStats:
        """Wait until every device connected (or the fleet failed). Raises RuntimeError on failure."""
        reply = await asyncio.to_thread(self._receive, timeout)
        if reply[0] == "error":
            raise RuntimeError(f"fleet failed: {reply[1]}")
        _, stats, self.connect_seconds = reply
        return stats  # type: ignore[no-any-return]

    def _receive(self, timeout: float) -> tuple[Any, ...]:
        if not self._pipe.poll(timeout):
            raise TimeoutError(f"the fleet did not connect within {timeout:.0f} s")
        try:
            return self._pipe.recv()  # type: ignore[no-any-return]
        except EOFError:
            raise RuntimeError(f"the fleet process exited (code {self._proc.exitcode})") from None

    def stop(self, timeout: float = 60.0) -> None:
        """Disconnect every device and end the process (idempotent; kills it if it hangs)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._pipe.send("stop")
            while self._pipe.poll(timeout):
                if self._pipe.recv()[0] == "stopped":
                    break
        except (OSError, EOFError):
            pass  # already gone
        self._pipe.close()
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def _child(pipe: Connection, connection_string: str, fleet_kwargs: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(pipe, Fleet(connection_string, **fleet_kwargs)))


async def _serve(pipe: Connection, fleet: Fleet) -> None:
    loop = asyncio.get_running_loop()
    stop_requested: asyncio.Future[Any] = loop.run_in_executor(None, _wait_for_stop, pipe)
    starting: asyncio.Future[Any] = asyncio.ensure_future(fleet.start(timeout=300))
    try:
        await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            error = starting.exception()
            pipe.send(("error", f"{type(error).__name__}: {error}") if error else
                      ("started", fleet.stats, fleet.connect_seconds))  # fmt: skip
        await stop_requested
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await fleet.stop()
        try:
            pipe.send(("stopped", fleet.stats))
        except OSError:
            pass


def _wait_for_stop(pipe: Connection) -> None:
    try:
        pipe.recv()
    except (EOFError, OSError):
        pass  # the parent is gone: stop too
