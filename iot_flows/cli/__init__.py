"""Command line: ``iot-flows`` (entry point :func:`iot_flows._console.main`, then :func:`main`).

:func:`settings_options` builds a command's options from settings models;
``demo_app`` is ``./scripts/demo`` / ``python -m iot_flows.demo``.

The names load on first use (PEP 562): loading the command line takes about a second, and
``python -m iot_flows.cli`` imports this package before :mod:`iot_flows._console` can catch
a Ctrl-C pressed meanwhile.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iot_flows.cli._demo import demo_app
    from iot_flows.cli._main import main
    from iot_flows.cli._options import settings_options

__all__ = ["demo_app", "main", "settings_options"]

_HOMES = {"demo_app": "iot_flows.cli._demo", "main": "iot_flows.cli._main", "settings_options": "iot_flows.cli._options"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
