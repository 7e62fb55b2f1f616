"""Compact JSON, as IoT Hub and the Azure SDKs write it: no spaces, UTF-8 text kept as is.

One encoder for every wire payload, store column and bus message, so the bytes a device,
the database and a peer hub node see for the same document are the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["dumps"]

#: ``dumps(obj) -> str``: ``{"a":1,"b":"é"}`` (separators ``,``/``:``, ``ensure_ascii=False``).
#: Raises ``TypeError`` for values JSON cannot represent, ``ValueError`` for circular references.
dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
