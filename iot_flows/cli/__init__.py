"""Command line: ``iot-flows`` (entry point :func:`iot_flows.cli._main.main`).

:func:`settings_options` builds a command's options from settings models;
``demo_app`` is ``./scripts/demo`` / ``python -m iot_flows.demo``.
"""

from iot_flows.cli._demo import demo_app
from iot_flows.cli._options import settings_options

__all__ = ["demo_app", "settings_options"]
