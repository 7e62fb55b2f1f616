"""``iot-flows demo``: the same command as ``./scripts/demo`` (:mod:`iot_flows.demo`).

Options come from :class:`~iot_flows._settings.DemoSettings` (``IOT_FLOWS_DEMO_*``).
"""

from __future__ import annotations

import typer

from iot_flows._settings import DemoSettings
from iot_flows.cli._options import settings_options

__all__ = ["demo", "demo_app"]

_EPILOG = (
    "Watch the runs in the Prefect UI: run `.venv/bin/prefect server start` in another terminal and "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api` before ./scripts/demo."
)


@settings_options(settings=DemoSettings)
def demo(settings: DemoSettings) -> None:
    """An embedded hub, a simulated fleet over MQTT, and every seed scenario as a Prefect flow run."""
    from iot_flows.demo import QUICK_DEVICES, launch

    if settings.quick and "devices" in settings.model_fields_set:
        raise typer.BadParameter("--quick means 100 devices; give --quick or --devices, not both")
    devices = QUICK_DEVICES if settings.quick else settings.devices
    raise typer.Exit(launch(devices, tuple(settings.only), verbose=settings.verbose))


demo_app = typer.Typer(add_completion=False, epilog=_EPILOG)
demo_app.command(epilog=_EPILOG)(demo)
