"""Maintenance windows: a daily time range in a time zone, optionally on some weekdays only.

JSON form (desired ``maintenanceWindow`` on devices, ``maintenance_window`` of rollouts)::

    {"start": "22:00", "end": "04:00", "timezone": "UTC", "days": ["Sat", "Sun"]}

Daily from ``start`` (inclusive) to ``end`` (exclusive), local to ``timezone`` (``UTC``,
an IANA name such as ``Europe/Berlin``, or an offset ``+02:00``); a window whose ``end``
is before its ``start`` crosses midnight and belongs to the day it starts on;
``start == end`` means the whole day; ``days`` (``Mon``..``Sun``) restricts the days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["MaintenanceWindow"]

_DAYS = {name: i for i, name in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))}


def _parse_tz(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z", "GMT"):
        return UTC
    match = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", name)
    if match:
        sign = 1 if match.group(1) == "+" else -1
        return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc


def _parse_hhmm(value: Any, field: str) -> dtime:
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}", value):
        raise ValueError(f"{field} must be 'HH:MM', got {value!r}")
    hours, minutes = (int(part) for part in value.split(":"))
    if hours > 23 or minutes > 59:
        raise ValueError(f"{field} {value!r} is not a time of day")
    return dtime(hours, minutes)


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A daily window, local to ``tz``; see the module docstring for the JSON form."""

    start: dtime
    end: dtime
    tz: tzinfo = UTC
    days: frozenset[int] | None = None

    @classmethod
    def parse(cls, doc: Any) -> MaintenanceWindow:
        """Parse the desired ``maintenanceWindow`` object; raise ``ValueError`` if invalid."""
        if not isinstance(doc, dict):
            raise ValueError("maintenanceWindow must be an object")
        days = doc.get("days")
        parsed_days: frozenset[int] | None = None
        if days is not None:
            if not isinstance(days, list) or not days:
                raise ValueError("days must be a non-empty list such as ['Mon', 'Tue']")
            try:
                parsed_days = frozenset(_DAYS[str(day).strip().lower()[:3]] for day in days)
            except KeyError as exc:
                raise ValueError(f"unknown day {exc.args[0]!r}") from None
        return cls(
            start=_parse_hhmm(doc.get("start"), "start"),
            end=_parse_hhmm(doc.get("end"), "end"),
            tz=_parse_tz(str(doc.get("timezone") or "UTC")),
            days=parsed_days,
        )

    def _day_ok(self, day: int) -> bool:
        return self.days is None or day in self.days

    def is_open(self, now: datetime | None = None) -> bool:
        """True when ``now`` (default: the current UTC time) falls inside the window, in its time zone.

        A window that crosses midnight belongs to the day it starts on; ``start == end`` means the whole day.
        """
        local = (now or datetime.now(UTC)).astimezone(self.tz)
        t, day = local.time().replace(tzinfo=None), local.weekday()
        if self.start == self.end:
            return self._day_ok(day)
        if self.start < self.end:
            return self.start <= t < self.end and self._day_ok(day)
        # crosses midnight: the window belongs to the day it starts on
        return (t >= self.start and self._day_ok(day)) or (t < self.end and self._day_ok((day - 1) % 7))

    def seconds_until_open(self, now: datetime | None = None) -> float:
        """0 when open, else the seconds until the next opening."""
        now = now or datetime.now(UTC)
        if self.is_open(now):
            return 0.0
        local = now.astimezone(self.tz)
        for offset in range(0, 8):
            day = local.date() + timedelta(days=offset)
            candidate = datetime.combine(day, self.start, tzinfo=self.tz)
            if candidate > local and self._day_ok(candidate.weekday()):
                return (candidate - local).total_seconds()
        return 7 * 86400.0
