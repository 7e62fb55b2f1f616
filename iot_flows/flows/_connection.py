"""Which hub a flow talks to: a block, a saved block's name, or the embedded default.

With nothing configured, flows start an embedded hub (SQLite in a temporary folder,
free ports on 127.0.0.1) once per process, so a flow run on a laptop works with no
set-up. ``IOT_FLOWS_HUB_CONNECTION`` names a saved :class:`HubConnection` to use instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from typing import TYPE_CHECKING

from pydantic import SecretStr

from iot_flows._settings import ClientSettings
from iot_flows.blocks import HubConnection

if TYPE_CHECKING:
    from iot_flows.hub import EmbeddedHub

__all__ = ["ConnectionRef", "MissingBlockError", "embedded_hub", "resolve_connection"]

ConnectionRef = HubConnection | str | None
_lock = threading.Lock()
_embedded: EmbeddedHub | None = None


def embedded_hub() -> EmbeddedHub:
    """The process-wide embedded hub, started on first use and stopped at exit."""
    global _embedded
    with _lock:
        if _embedded is None:
            from iot_flows.hub import EmbeddedHub, HubSettings

            folder = tempfile.mkdtemp(prefix="iot-flows-hub-")
            hub = EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=os.path.join(folder, "hub.db")))
            hub.start()

            def stop() -> None:
                hub.stop()
                shutil.rmtree(folder, ignore_errors=True)

            atexit.register(stop)
            _embedded = hub
        return _embedded


async def resolve_connection(connection: ConnectionRef) -> HubConnection:
    """Turn a flow's ``connection`` parameter into a :class:`HubConnection`."""
    if isinstance(connection, HubConnection):
        return connection
    name = connection or ClientSettings().connection  # IOT_FLOWS_HUB_CONNECTION
    if name:
        try:
            return await HubConnection.load(name)  # type: ignore[no-any-return]  # Block.load is typed as returning Any
        except ValueError as exc:
            if "Unable to find block document" not in str(exc):
                raise
            raise MissingBlockError(name) from None
    hub = embedded_hub()
    return HubConnection(connection_string=SecretStr(hub.connection_string()), base_url=hub.base_url)


class MissingBlockError(ValueError):
    """The ``connection`` parameter names a HubConnection block the Prefect server does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no HubConnection block named {name!r} on the Prefect server; create it with: "
            f"python -c \"from iot_flows.blocks import HubConnection; HubConnection("
            f"connection_string='HostName=...;SharedAccessKeyName=...;SharedAccessKey=...', "
            f"base_url='http://127.0.0.1:8080').save('{name}')\" "
            f"(base_url empty for Azure IoT Hub), or pass another block name as the connection parameter"
        )
        self.block_name = name
