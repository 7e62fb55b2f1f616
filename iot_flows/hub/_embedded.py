"""A hub running in a background thread, for ad-hoc flow runs, demos and tests.

The hub owns its own event loop in that thread, so callers may block (paho clients,
sync HTTP, Prefect's own loop) without stalling it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from iot_flows.hub._hub import Hub, HubSettings

__all__ = ["EmbeddedHub"]

T = TypeVar("T")


class EmbeddedHub:
    """Start with ``with EmbeddedHub(settings) as hub:`` or ``start()`` / ``stop()``."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.hub = Hub(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self, timeout: float = 30.0) -> EmbeddedHub:
        """Start the hub on its own thread and event loop; return once it listens.

        Raises what ``Hub.start`` raised (e.g. ``StoreUnavailableError``), or ``TimeoutError`` after ``timeout`` s.
        """
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.hub.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.hub.stop())
                loop.close()
                self._stopped.set()

        self._thread = threading.Thread(target=run, name="iot-flows-hub", daemon=True)
        self._thread.start()
        started.result(timeout)
        return self

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = 60.0) -> T:
        """Run a coroutine function on the hub's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)  # type: ignore[arg-type]

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a plain function on the hub's loop (thread-safe access to hub state)."""

        async def wrapper() -> Any:
            return fn(*args)

        return self.call(wrapper)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the hub (``Hub.stop`` on its loop) and join its thread, waiting up to ``timeout`` s."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop = None

    def __enter__(self) -> EmbeddedHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Convenience passthroughs
    def connection_string(self, policy: str = "iothubowner") -> str:
        """The service connection string for ``policy`` (default ``iothubowner``)."""
        return self.hub.connection_string(policy)

    @property
    def base_url(self) -> str:
        """``http(s)://host:port`` of the REST API."""
        return self.hub.base_url
