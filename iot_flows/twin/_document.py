"""Twin section rules: merge patches, ``$metadata`` stamping and IoT Hub's limits.

Pure functions over plain dicts; the hub's twin service and the device simulator use
them alike. Patch semantics (docs/iothub-reference.md §1.2): members present are added or replaced,
a member set to ``null`` is removed, arrays are leaf values (no element-wise merge).
``$metadata`` is kept at every level of the tree, not only at leaves, so a removal
still leaves a trace of when the parent changed. Desired metadata carries
``$lastUpdatedVersion``; reported metadata only ``$lastUpdated``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from iot_flows._exceptions import BadRequestError
from iot_flows._time import utc_now

__all__ = [
    "MAX_DEPTH",
    "SECTION_LIMITS",
    "TwinTooLargeError",
    "apply_patch",
    "removed_keys_as_nulls",
    "replace_section",
    "section_size",
    "utc_now",
    "validate_patch",
    "validate_section_size",
]

#: Byte limits per twin section (docs/iothub-reference.md §1.4); ``$version``/``$metadata`` excluded.
SECTION_LIMITS = {"tags": 8 * 1024, "desired": 32 * 1024, "reported": 32 * 1024}
#: Maximum number of nested objects below a section root. D-TWIN's own valid example
#: ``{"tags":{"one":{"two":...{"ten":{"property":"value"}}}}}`` has 10; 11 are refused.
MAX_DEPTH = 10
MAX_KEY_BYTES = 1024
MAX_STRING_BYTES = 4 * 1024
MAX_SAFE_INT = 2**52
#: C0 and C1 control characters (not counted in sizes); names also refuse '.', '$' and space.
_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f-\x9f]")
_BAD_KEY_CHAR = re.compile("[.$ \x00-\x1f\x7f-\x9f]")


class TwinTooLargeError(BadRequestError):
    """Raised when an operation would push a twin section over its size limit.

    REST answers 400 as Azure does; the MQTT endpoint answers such a reported patch
    with status 413.
    """


def _check_key(key: str, path: str) -> None:
    if not key:
        raise BadRequestError(f"Empty property name at '{path}'.")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise BadRequestError(f"Property name at '{path}' is longer than {MAX_KEY_BYTES} bytes.")
    bad = _BAD_KEY_CHAR.search(key)
    if bad is not None:
        ch = bad.group()
        raise BadRequestError(
                f"Property name '{key}' at '{path}' contains an invalid character {ch!r}: "
                "names may not contain '.', '$', space or control characters."
            )


def _check_value(value: Any, path: str, depth: int) -> None:
    """``depth`` counts the objects from the section root (exclusive) down to ``value``
    if ``value`` is an object; leaves do not add a level (D-TWIN's depth-10 example)."""
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise BadRequestError(f"Twin property '{path}' is nested deeper than {MAX_DEPTH} levels of objects.")
        for key, child in value.items():
            if not isinstance(key, str):
                raise BadRequestError(f"Property name at '{path}' is not a string.")
            _check_key(key, path)
            _check_value(child, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if item is not None:
                _check_value(item, f"{path}[{index}]", depth)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -MAX_SAFE_INT <= value < MAX_SAFE_INT:
            raise BadRequestError(f"Integer at '{path}' is outside the range -2^52 .. 2^52-1.")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadRequestError(f"Number at '{path}' is not finite.")
    elif isinstance(value, str):
        if len(value.encode()) > MAX_STRING_BYTES:
            raise BadRequestError(f"String at '{path}' is longer than {MAX_STRING_BYTES} bytes.")
    else:
        raise BadRequestError(f"Unsupported value type at '{path}'.")


def validate_patch(section: str, patch: Any) -> None:
    """Check a patch (or a full section) for key, depth, type and value rules.

    Raise :class:`BadRequestError` (400004) naming the offending path.
    """
    if not isinstance(patch, dict):
        raise BadRequestError(f"'{section}' must be a JSON object.")
    for key, value in patch.items():
        _check_key(key, section)
        _check_value(value, f"{section}.{key}", 1)


def section_size(value: Any) -> int:
    """Size of a value by IoT Hub's rule (D-TWIN): keys as UTF-8 bytes, strings by
    characters without C0/C1 controls, numbers 8, booleans 4, objects the sum of theirs."""
    if isinstance(value, dict):
        return sum(len(k.encode()) + section_size(v) for k, v in value.items() if not k.startswith("$"))
    if isinstance(value, list):
        return sum(section_size(v) for v in value)
    if isinstance(value, bool):
        return 4
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, str):
        return len(value) if _CONTROL_CHAR.search(value) is None else len(_CONTROL_CHAR.sub("", value))
    return 0


def validate_section_size(section: str, document: dict[str, Any]) -> None:
    """Raise :class:`TwinTooLargeError` if ``document`` is over the section's limit."""
    limit = SECTION_LIMITS[section]
    size = section_size(document)
    if size > limit:
        raise TwinTooLargeError(
            f"Twin {section} would be {size} bytes, over the {limit} byte limit; nothing was stored."
        )


def _stamp(meta: dict[str, Any], now: str, version: int | None) -> None:
    meta["$lastUpdated"] = now
    if version is not None:
        meta["$lastUpdatedVersion"] = version


def _leaf_meta(value: Any, now: str, version: int | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, child in value.items():
            if child is not None:
                meta[key] = _leaf_meta(child, now, version)
    _stamp(meta, now, version)
    return meta


def apply_patch(
    values: dict[str, Any],
    meta: dict[str, Any],
    patch: dict[str, Any],
    now: str,
    version: int | None,
) -> None:
    """Merge ``patch`` into ``values`` in place and stamp ``meta`` along every touched path.

    ``version`` is the new desired ``$version`` (stamped as ``$lastUpdatedVersion``) or
    ``None`` for reported properties and tags.
    """
    for key, change in patch.items():
        if change is None:
            values.pop(key, None)
            meta.pop(key, None)
        elif isinstance(change, dict):
            current = values.get(key)
            if not isinstance(current, dict):
                current = values[key] = {}
                meta[key] = {}
            child_meta = meta.get(key)
            if not isinstance(child_meta, dict):
                child_meta = meta[key] = {}
            apply_patch(current, child_meta, change, now, version)
        else:
            values[key] = copy.deepcopy(change)
            meta[key] = _leaf_meta(change, now, version)
    _stamp(meta, now, version)


def replace_section(
    new_values: dict[str, Any], now: str, version: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build a whole new section (PUT semantics) and its metadata; nulls are dropped."""
    values: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    apply_patch(values, meta, new_values, now, version)
    return values, meta


def removed_keys_as_nulls(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The notification form of a replacement: the new section plus each removed key as ``null``.

    SDKs merge notifications into their copy and delete null keys, so a replacement
    must name what it removed (docs/iothub-reference.md §9.4).
    """
    out: dict[str, Any] = {}
    for key in old:
        if key.startswith("$"):
            continue
        if key not in new:
            out[key] = None
    for key, value in new.items():
        old_value = old.get(key)
        if isinstance(value, dict) and isinstance(old_value, dict):
            out[key] = removed_keys_as_nulls(old_value, value)
        else:
            out[key] = copy.deepcopy(value)
    return out
