"""SQLite schema of the hub's store: one row per device (identity + twin), job tables.

Twin sections are stored as JSON text columns so that the query compiler can address
them with ``json_extract(<column>, '$.path')`` and SQLite expression indexes can serve
hot paths. Column to twin-field mapping (what the query language sees):

=====================================  ===========================================
query path                              SQL expression
=====================================  ===========================================
``deviceId``                            ``device_id``
``status`` / ``statusReason``           ``status`` / ``status_reason``
``connectionState``                     ``connection_state`` ('Connected'|'Disconnected')
``lastActivityTime``                    ``last_activity_time``
``version`` / ``etag``                  ``twin_version`` / ``twin_etag``
``authenticationType``                  ``auth_type``
``capabilities.iotEdge``                ``json_extract(capabilities, '$.iotEdge')``
``tags.a.b``                            ``json_extract(tags, '$.a.b')``
``properties.desired.a``                ``json_extract(desired, '$.a')``
``properties.reported.a``               ``json_extract(reported, '$.a')``
``properties.desired.$version``         ``desired_version`` (reported likewise)
=====================================  ===========================================
"""

SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS devices (
    device_id            TEXT PRIMARY KEY,
    generation_id        TEXT NOT NULL,
    device_etag          TEXT NOT NULL,
    status               TEXT NOT NULL DEFAULT 'enabled',
    status_reason        TEXT,
    status_updated_time  TEXT NOT NULL,
    auth_type            TEXT NOT NULL DEFAULT 'sas',
    primary_key          TEXT,
    secondary_key        TEXT,
    primary_thumbprint   TEXT,
    secondary_thumbprint TEXT,
    capabilities         TEXT NOT NULL DEFAULT '{"iotEdge":false}',
    connection_state     TEXT NOT NULL DEFAULT 'Disconnected',
    connection_state_updated_time TEXT NOT NULL,
    last_activity_time   TEXT NOT NULL,
    c2d_message_count    INTEGER NOT NULL DEFAULT 0,
    tags                 TEXT NOT NULL DEFAULT '{}',
    desired              TEXT NOT NULL DEFAULT '{}',
    reported             TEXT NOT NULL DEFAULT '{}',
    tags_meta            TEXT NOT NULL DEFAULT '{}',
    desired_meta         TEXT NOT NULL DEFAULT '{}',
    reported_meta        TEXT NOT NULL DEFAULT '{}',
    desired_version      INTEGER NOT NULL DEFAULT 1,
    reported_version     INTEGER NOT NULL DEFAULT 1,
    twin_version         INTEGER NOT NULL DEFAULT 1,
    twin_etag            TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS ix_devices_connection_state ON devices (connection_state);
CREATE INDEX IF NOT EXISTS ix_devices_status ON devices (status);
"""
