"""The bundled hub under Prefect (``serve_hub``) and hub changes as Prefect events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.flows._events import emit_change_event
from iot_flows.flows._ui import param, run_name
from iot_flows.hub import HubSettings

__all__ = ["HubServeRequest", "forward_hub_events", "run_hub", "serve_hub"]


#: The hub settings a ``serve_hub`` run takes (secrets and process options stay out).
_NOT_PARAMETERS = frozenset({"owner_key", "log_level", "profile", "jobs"})


def _serve_request_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (info.annotation, FieldInfo.merge_field_infos(info))
        for name, info in HubSettings.model_fields.items()
        if name not in _NOT_PARAMETERS
    }
    fields["duration_seconds"] = (
        float | None,
        Field(default=None, description="Stop after this long; empty = until cancelled."),
    )
    model: type[BaseModel] = create_model("HubServeRequest", __module__=__name__, **fields)
    model.__doc__ = (
        "What ``serve_hub`` serves: :class:`~iot_flows.hub.HubSettings`' fields (the same as "
        "``iot-flows hub serve``'s options) plus ``duration_seconds``. Fields left unset come "
        "from the worker's ``IOT_FLOWS_HUB_*`` environment, then the defaults."
    )
    return model


#: Generated from :class:`~iot_flows.hub.HubSettings` (fields, defaults, descriptions).
HubServeRequest = _serve_request_model()


@task(name="run_hub")
async def run_hub(request: BaseModel) -> dict[str, object]:
    """Run the hub in this task's event loop until the duration ends or the run is cancelled.

    ``request`` is a :data:`HubServeRequest`; the fields it leaves unset come from the
    ``IOT_FLOWS_HUB_*`` environment, then :class:`~iot_flows.hub.HubSettings`' defaults.

    Returns:
        ``{"served_seconds": s, "devices_connected_at_stop": n}``.
    """
    from iot_flows.hub import Hub

    given = request.model_dump(exclude={"duration_seconds"}, exclude_unset=True)
    duration: float | None = getattr(request, "duration_seconds", None)
    hub = Hub(HubSettings(**given))
    await hub.start()
    s = hub.settings
    logger = get_run_logger()
    logger.info("hub ready: MQTT %s:%s, REST %s", s.host, hub.mqtt_port, hub.base_url)
    # Never log the key: logs go to the Prefect API and UI.
    logger.info("service connection string: HostName=%s;SharedAccessKeyName=iothubowner;SharedAccessKey=<hidden>"
                " (printed by `iot-flows hub serve`, stored in %s)", s.hostname, s.db)
    started = time.monotonic()
    try:
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
    finally:
        devices = len(hub.sessions)
        await hub.stop()
    return {"served_seconds": round(time.monotonic() - started, 1), "devices_connected_at_stop": devices}


@flow(name="Serve the hub", log_prints=True,
      flow_run_name=run_name(lambda p: f"hub · MQTT {param(p, 'mqtt_port', 1883)}, REST {param(p, 'http_port', 8080)}"))  # fmt: skip
async def serve_hub(request: HubServeRequest | None = None) -> dict[str, object]:  # type: ignore[valid-type]
    """Run the bundled IoT Hub-compatible hub as a (long-running) Prefect flow run."""
    return await run_hub(request or HubServeRequest())


@flow(name="Forward hub events to Prefect", log_prints=True,
      flow_run_name=run_name(lambda p: f"hub events · {float(p.get('duration_seconds', 60.0)):g} s"
                             + (" with connections" if p.get("include_connection_events") else "")))  # fmt: skip
async def forward_hub_events(
    connection: ConnectionRef = None,
    duration_seconds: float = 60.0,
    since: int = -1,
    include_connection_events: bool = False,
) -> dict[str, int]:
    """Turn the hub's change stream into Prefect events (``iot-flows.twin.reported-changed``, ...).

    A Prefect automation on these events can start the next rollout wave or a follow-up
    flow (see the README). Bundled hub only: Azure routes the same changes to Event Hubs.

    Args:
        since: emit changes after this sequence number; -1 (default) starts from now,
            0 replays what the hub still keeps.

    Returns:
        ``{"emitted": n, "next": sequence}``; pass ``next`` as ``since`` to resume.
    """
    conn = await resolve_connection(connection)
    emitted = 0
    deadline = time.monotonic() + duration_seconds
    async with conn.get_client() as hub:
        host = hub.host_name
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = await hub.read_changes(since, wait=min(remaining, 10.0))
            if batch.get("truncated"):
                get_run_logger().warning("fell behind the hub's change stream; some changes were lost")
            for change in batch["changes"]:
                if change["kind"].startswith("device.") and not include_connection_events:
                    continue
                if emit_change_event(change, host) is not None:
                    emitted += 1
            since = batch["next"]
    return {"emitted": emitted, "next": since}
