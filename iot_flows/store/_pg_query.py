"""PostgreSQL twin query pages: each ``Twin`` document built by PostgreSQL as JSON text.

A page of twins leaves the database as one JSON text per row (:data:`TWIN_DOC`), with
the members in ``DeviceRecord.twin_json()``'s order: ``json_build_object`` (``json``, not
``jsonb``, keeps the order it is given) and text concatenation for the twin sections,
whose own members keep their stored ``jsonb`` order, followed by ``$metadata`` and
``$version`` as ``twin_json()`` puts them. Nothing is parsed or encoded in Python.
"""

from __future__ import annotations

__all__ = ["TWIN_DOC"]


def _section(column: str) -> str:
    """``{**section, "$metadata": meta, "$version": version}`` as ``json``, from the columns.

    A section holding ``$metadata`` or ``$version`` itself (never stored by the hub) has
    those members dropped first, so the document stays the same once parsed."""
    body = f"(CASE WHEN {column} ?| array['$metadata', '$version'] THEN {column} - '$metadata' - '$version' ELSE {column} END)"
    return (
        f"(CASE WHEN {body} = '{{}}'::jsonb THEN '{{' ELSE left({body}::text, -1) || ', ' END"
        f" || '\"$metadata\": ' || {column}_meta::text || ', \"$version\": ' || {column}_version::text || '}}')::json"
    )


#: ``DeviceRecord.twin_json()`` as JSON text, built by PostgreSQL (same members, same order).
TWIN_DOC = (
    "json_build_object('deviceId', device_id, 'etag', twin_etag, 'deviceEtag', device_etag, 'status', status,"
    " 'statusReason', status_reason, 'statusUpdateTime', status_updated_time, 'connectionState', connection_state,"
    " 'lastActivityTime', last_activity_time, 'cloudToDeviceMessageCount', c2d_message_count,"
    " 'authenticationType', auth_type, 'x509Thumbprint', json_build_object('primaryThumbprint', primary_thumbprint,"
    " 'secondaryThumbprint', secondary_thumbprint), 'modelId', model_id, 'version', twin_version, 'tags', tags,"
    f" 'properties', json_build_object('desired', {_section('desired')}, 'reported', {_section('reported')}),"
    " 'capabilities', capabilities)::text"
)
