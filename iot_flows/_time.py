"""IoT Hub's time format: UTC ISO 8601 with seven fractional digits and ``Z``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

__all__ = ["format_time", "parse_time", "utc_now"]

_FRACTION = re.compile(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$")


def format_time(value: datetime) -> str:
    """``2019-12-09T22:48:05.9703541Z`` (the last digit is always 0: Python has microseconds)."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}0Z"


#: (whole second, its formatted prefix) of the last :func:`utc_now`: every twin write and
#: change-feed entry stamps a time, and ``strftime`` per call was a visible share of a write.
_second: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """The current time in IoT Hub's format (as :func:`format_time` of ``datetime.now(UTC)``)."""
    global _second
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    if second != _second[0]:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)))
    return f"{_second[1]}{fraction:06d}0Z"


def parse_time(value: str) -> datetime:
    """Parse ISO 8601 as IoT Hub and its SDKs write it (``Z``, up to 7 fractional digits)."""
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    match = _FRACTION.match(text)
    if match and match.group(2):
        # Python parses at most 6 fractional digits; IoT Hub sends 7.
        text = f"{match.group(1)}.{match.group(2)[1:][:6].ljust(6, '0')}{match.group(3)}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
