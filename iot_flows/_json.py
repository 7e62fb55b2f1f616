"""Compact JSON, as IoT Hub and the Azure SDKs write it: no spaces, UTF-8 text kept as is.

One encoder for every wire payload, store column and bus message, so the bytes a device,
the database and a peer hub node see for the same document are the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

#: ``dumps(obj) -> str``: ``{"a":1,"b":"é"}`` (separators ``,``/``:``, ``ensure_ascii=False``).
#: Raises ``TypeError`` for values JSON cannot represent, ``ValueError`` for circular references.
dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_strict = json.JSONDecoder(parse_constant=_refuse_constant)


def loads(data: str | bytes) -> Any:
    """Parse JSON text as RFC 8259 defines it: what a device or service sends the hub.

    orjson first (3-4x faster); Python's parser for what orjson refuses but JSON allows
    (integers beyond 64 bits). ``NaN``, ``Infinity`` and ``-Infinity``, which Python's
    ``json`` accepts by default, are refused: stored, they would make every later read
    of the document invalid JSON.

    Raises:
        ValueError: not JSON (``UnicodeDecodeError`` and ``json.JSONDecodeError`` are
        ValueErrors too).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return _strict.decode(text)
