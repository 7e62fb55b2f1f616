"""The installed firmware version: one rule, read from a twin or written as a query condition.

Devices report their running firmware under one of three reported properties (the
simulator reports all three, equal; see ``iot_flows.device`` behaviours):

1. ``firmware.currentFwVersion``: Azure's desired-property firmware update (docs/iothub-reference.md §7.4);
2. ``iothubDM.firmwareVersion``: the C SDK device-management sample (docs/iothub-reference.md §7.3);
3. ``firmware.version``: the simulator's short alias.

**Rule:** the installed version is the first of these paths, in this order, whose reported
value is set (present and not ``""``). :func:`installed_version` applies it to a twin and
:func:`not_on_version_condition` writes the same rule as an IoT Hub query condition, so
flows that read twins and jobs that select devices agree on every device.
"""

from __future__ import annotations

from typing import Any

from iot_flows.client import quote_string
from iot_flows.flows._common import reported_value

__all__ = ["VERSION_PATHS", "installed_version", "not_on_version_condition"]

VERSION_PATHS = ("firmware.currentFwVersion", "iothubDM.firmwareVersion", "firmware.version")


def installed_version(twin: dict[str, Any] | None) -> Any:
    """The installed firmware version a twin reports (by the rule above), or None."""
    for path in VERSION_PATHS:
        value = reported_value(twin, path)
        if value is not None and value != "":
            return value
    return None


def not_on_version_condition(version: str) -> str:
    """A WHERE body true for devices whose installed version (same rule) is not ``version``.

    Uses only ``IS_DEFINED``, comparisons and ``AND``/``OR``/``NOT`` (what Azure's twin
    queries support), and never relies on an undefined value: each branch is a real Boolean.
    """
    v = quote_string(version)
    condition = ""
    for path in reversed(VERSION_PATHS):
        p = f"properties.reported.{path}"
        is_set = f"(IS_DEFINED({p}) AND {p} != '')"
        unset = f"(NOT IS_DEFINED({p}) OR {p} = '')"
        differs = f"{is_set} AND {p} != {v}"
        condition = f"({differs}) OR ({unset}{f' AND ({condition})' if condition else ''})"
    return condition
