"""Direct-method task."""

from __future__ import annotations

from typing import Any

from prefect import task

from iot_flows._types import MethodResult
from iot_flows.blocks import HubConnection
from iot_flows.tasks._retry import RETRY

__all__ = ["invoke_device_method"]


@task(name="invoke_device_method", **RETRY)
async def invoke_device_method(
    connection: HubConnection,
    device_id: str,
    method_name: str,
    payload: Any = None,
    response_timeout: int = 30,
    connect_timeout: int = 0,
) -> MethodResult:
    """Invoke a direct method on one device.

    Returns:
        The device's own status and payload (a device error is data, not an exception).

    Retried only when the request surely never reached the device (404103, 429, a
    connection that could not be opened); never after a 504101 or a lost response, so a
    method such as ``reboot`` runs at most once per call.

    Raises:
        DeviceNotOnlineError: offline or not subscribed (retried: it may come back).
        GatewayTimeoutError: no answer within ``response_timeout`` (not retried: the device
            may have run it).
        TransportError: the connection failed (retried only if it never opened).
    """
    async with connection.get_client() as hub:
        return await hub.invoke_device_method(
            device_id, method_name, payload, response_timeout=response_timeout, connect_timeout=connect_timeout
        )
