"""Prefect blocks: :class:`HubConnection`, the service connection to a hub.

Saved and loaded by name like Prefect's own integration blocks::

    HubConnection(connection_string="HostName=...;SharedAccessKeyName=...;SharedAccessKey=...",
                  base_url="http://127.0.0.1:8080").save("fleet-hub")
    conn = await HubConnection.load("fleet-hub")

Against Azure IoT Hub leave ``base_url`` empty: it defaults to ``https://{HostName}``.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from iot_flows.client import HubClient

__all__ = ["HubConnection"]


class HubConnection(Block):
    """Service credentials and address of an IoT Hub (Azure or the bundled hub)."""

    _block_type_name = "IoT Hub Connection"
    _block_type_slug = "iot-hub-connection"
    _description = "Service connection string (and address) of an Azure IoT Hub or an iot-flows hub."
    _documentation_url = "https://github.com/iot-flows/iot-flows#prefect-layer"  # type: ignore[assignment]

    connection_string: SecretStr = Field(
        description="Service connection string: HostName=...;SharedAccessKeyName=...;SharedAccessKey=..."
    )
    base_url: str | None = Field(
        default=None, description="REST base URL; empty means https://{HostName} (Azure IoT Hub)."
    )
    ca_file: str | None = Field(default=None, description="PEM CA bundle to verify the hub's TLS certificate.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="HTTP timeout of ordinary requests.")

    def get_client(self) -> HubClient:
        """A new :class:`HubClient`; use it as ``async with conn.get_client() as hub:``."""
        return HubClient(
            self.connection_string.get_secret_value(),
            base_url=self.base_url,
            verify=self.ca_file or True,
            timeout=self.timeout_seconds,
        )
