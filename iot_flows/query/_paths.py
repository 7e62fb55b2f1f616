"""Field table: what a query path means in the SQLite store and in a REST document.

One table serves both back ends so they cannot drift: :func:`resolve` maps a written
path to a :class:`~._ast.Ref`, :func:`lookup` reads that ref from a twin / device-job
document (the oracle), and :func:`json_path_literal` renders the JSON path of a ref as
the SQL string literal the compiler emits.

Decisions (see also ``iot_flows/store/_schema.py``):

* Fixed names (root fields, ``tags``, ``properties``, ``desired``, ``reported``,
  ``capabilities``, ``$version``, job fields) match case-insensitively (the docs write
  ``DeviceId``); keys below ``tags``/``desired``/``reported`` are case-sensitive JSON keys.
* Unknown roots (``configurations``, ``moduleId``...) and ``$``-keys directly under
  ``desired``/``reported`` other than ``$version`` (``$metadata``) are undefined.
* A root field whose value is NULL/None is undefined, not JSON null.
* ``devices.jobs`` queries may only use ``devices.jobs.<field>``; ``createdTimeUtc``
  is an alias of ``createdDateTimeUtc`` (doc quirk).
"""

from __future__ import annotations

import re
from typing import Any

from ._ast import UNDEFINED, Ref

__all__ = ["SOURCES", "json_path_literal", "lookup", "resolve"]

SOURCES = {"devices": "devices", "devices.jobs": "devices.jobs"}

# lower-case name -> (document key, SQL column, value kind)
_TWIN_COLUMNS = {
    "deviceid": ("deviceId", "device_id", "text"),
    "etag": ("etag", "twin_etag", "text"),
    "deviceetag": ("deviceEtag", "device_etag", "text"),
    "status": ("status", "status", "text"),
    "statusreason": ("statusReason", "status_reason", "text"),
    "statusupdatetime": ("statusUpdateTime", "status_updated_time", "text"),
    "connectionstate": ("connectionState", "connection_state", "text"),
    "lastactivitytime": ("lastActivityTime", "last_activity_time", "text"),
    "cloudtodevicemessagecount": ("cloudToDeviceMessageCount", "c2d_message_count", "number"),
    "authenticationtype": ("authenticationType", "auth_type", "text"),
    "version": ("version", "twin_version", "number"),
    "modelid": ("modelId", "model_id", "text"),
}

_JOB_COLUMNS = {
    "jobid": ("jobId", "job_id", "text"),
    "deviceid": ("deviceId", "device_id", "text"),
    "jobtype": ("jobType", "job_type", "text"),
    "status": ("status", "status", "text"),
    "starttimeutc": ("startTimeUtc", "start_time_utc", "text"),
    "endtimeutc": ("endTimeUtc", "end_time_utc", "text"),
    "createddatetimeutc": ("createdDateTimeUtc", "created_date_time_utc", "text"),
    "createdtimeutc": ("createdDateTimeUtc", "created_date_time_utc", "text"),
    "lastupdateddatetimeutc": ("lastUpdatedDateTimeUtc", "last_updated_date_time_utc", "text"),
}
_JOB_JSON = {"outcome": "outcome", "error": "error"}

_UNDEFINED_REF = Ref("undefined")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def resolve(segments: tuple[str, ...], source: str) -> Ref | None:
    """Map a path to its ref; None means the path is not allowed in ``source``."""
    if source == "devices.jobs":
        return _resolve_job(segments)
    return _resolve_twin(segments)


def _resolve_job(segments: tuple[str, ...]) -> Ref | None:
    if len(segments) < 3 or [s.lower() for s in segments[:2]] != ["devices", "jobs"]:
        return None
    name, rest = segments[2].lower(), segments[3:]
    if name in _JOB_JSON:
        column = _JOB_JSON[name]
        return Ref("json", column=column, json_path=rest, doc_path=(column,))
    if name in _JOB_COLUMNS and not rest:
        key, column, kind = _JOB_COLUMNS[name]
        return Ref("column", column=column, value_kind=kind, doc_path=(key,))
    return _UNDEFINED_REF


def _resolve_twin(segments: tuple[str, ...]) -> Ref:
    head, rest = segments[0].lower(), segments[1:]
    if head in _TWIN_COLUMNS:
        if rest:
            return _UNDEFINED_REF
        key, column, kind = _TWIN_COLUMNS[head]
        return Ref("column", column=column, value_kind=kind, doc_path=(key,))
    if head == "tags":
        return Ref("json", column="tags", json_path=rest, doc_path=("tags",), empty_default=True)
    if head == "capabilities":
        if rest and rest[0].lower() == "iotedge":
            rest = ("iotEdge",) + rest[1:]
        return Ref(
            "json", column="capabilities", json_path=rest, doc_path=("capabilities",), empty_default=True
        )
    if head != "properties":
        return _UNDEFINED_REF
    if not rest:
        return Ref("properties")
    section = rest[0].lower()
    if section not in ("desired", "reported"):
        return _UNDEFINED_REF
    inner = rest[1:]
    if not inner:
        return Ref("section", column=section, doc_path=("properties", section))
    if inner[0].lower() == "$version":
        if len(inner) > 1:
            return _UNDEFINED_REF
        return Ref("column", column=f"{section}_version", value_kind="number",
                   doc_path=("properties", section, "$version"))
    if inner[0].startswith("$"):
        return _UNDEFINED_REF
    return Ref("json", column=section, json_path=inner, doc_path=("properties", section), empty_default=True)


def json_path_literal(segments: tuple[str, ...]) -> str:
    """Render ``$.a.b`` as a SQL string literal, deterministically.

    Identifier-like keys are written bare (``'$.firmware.version'``) so that a user's
    ``CREATE INDEX ... (json_extract(reported, '$.firmware.version'))`` is the identical
    expression and serves the query; other keys are double-quoted (``'$."odd key"'``).
    The binder has already rejected keys SQLite cannot address (``"``, ``\\``, controls).
    """
    parts = ["$"]
    for seg in segments:
        parts.append("." + seg if _PLAIN_KEY.match(seg) else '."' + seg + '"')
    return "'" + "".join(parts).replace("'", "''") + "'"


def _get(doc: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return UNDEFINED
        doc = doc[key]
    return doc


def _section(doc: dict[str, Any], name: str) -> Any:
    """``properties.<name>`` as the query sees it: user keys plus ``$version``."""
    raw = _get(doc, ("properties", name))
    if not isinstance(raw, dict):
        raw = {}
    out = {k: v for k, v in raw.items() if not k.startswith("$")}
    if "$version" in raw:
        out["$version"] = raw["$version"]
    return out


def lookup(ref: Ref, doc: dict[str, Any]) -> Any:
    """The value ``ref`` addresses in a REST-shaped document, or UNDEFINED."""
    kind = ref.kind
    if kind == "column":
        value = _get(doc, ref.doc_path)
        return UNDEFINED if value is None else value
    if kind == "json":
        base = _get(doc, ref.doc_path)
        if base is UNDEFINED or base is None:
            if not ref.empty_default:
                return UNDEFINED
            base = {}
        if ref.doc_path[0] == "properties" and isinstance(base, dict):
            base = {k: v for k, v in base.items() if not k.startswith("$")}
        return _get(base, ref.json_path)
    if kind == "section":
        return _section(doc, ref.column)
    if kind == "properties":
        return {"desired": _section(doc, "desired"), "reported": _section(doc, "reported")}
    return UNDEFINED
