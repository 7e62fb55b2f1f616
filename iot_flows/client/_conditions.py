"""Query conditions built from id lists, split so that no request exceeds IoT Hub's limits.

IoT Hub refuses a query or job ``queryCondition`` longer than 8,192 characters
(docs/iothub-reference.md §4.5) with 400, and a bulk registry call with more than 100 devices. Every request built
from a list of ids therefore goes through a splitter here: the list is unbounded, each
request is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

__all__ = ["MAX_BULK_DEVICES", "MAX_CONDITION_LENGTH", "MAX_QUERY_LENGTH", "chunks", "device_id_conditions", "quote_string"]

T = TypeVar("T")

#: IoT Hub's limit for a query's text and for a job's ``queryCondition`` (docs/iothub-reference.md §4.5).
MAX_QUERY_LENGTH = 8192
#: Budget for one condition: the limit minus room for the query it is embedded in
#: (``SELECT deviceId, properties.reported FROM devices WHERE `` and the like).
MAX_CONDITION_LENGTH = MAX_QUERY_LENGTH - 192
#: Azure's limit for one bulk registry call (``POST /devices``).
MAX_BULK_DEVICES = 100


def quote_string(value: str) -> str:
    """A single-quoted IoT Hub query string literal (``\\`` and ``'`` escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive lists of at most ``size`` (e.g. 100 devices per bulk call)."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def device_id_conditions(
    device_ids: Iterable[str], *, max_length: int = MAX_CONDITION_LENGTH
) -> list[tuple[list[str], str]]:
    """Split ids into ``(ids, "deviceId IN ['a', 'b', ...]")`` pairs, each condition at most
    ``max_length`` characters; together they select exactly ``device_ids`` (order kept,
    duplicates dropped).

    Raises:
        ValueError: one id alone does not fit in ``max_length``.
    """
    head, tail = "deviceId IN [", "]"
    out: list[tuple[list[str], str]] = []
    ids: list[str] = []
    parts: list[str] = []
    length = len(head) + len(tail)
    for device_id in dict.fromkeys(device_ids):
        literal = quote_string(device_id)
        extra = len(literal) + (2 if parts else 0)
        if parts and length + extra > max_length:
            out.append((ids, head + ", ".join(parts) + tail))
            ids, parts, length = [], [], len(head) + len(tail)
            extra = len(literal)
        if length + extra > max_length:
            raise ValueError(f"device id {device_id!r} alone makes a condition longer than {max_length} characters")
        ids.append(device_id)
        parts.append(literal)
        length += extra
    if parts:
        out.append((ids, head + ", ".join(parts) + tail))
    return out
