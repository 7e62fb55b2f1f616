"""PostgreSQL schema of the hub's store: the SQLite schema with ``jsonb`` documents.

Same tables and columns as :mod:`._schema` (the query compiler addresses both alike);
twin sections, metadata, job documents and device-job outcomes are ``jsonb``. Text
columns use the ``C`` collation so keyset paging and comparisons order by code point,
as SQLite does. Migrations are ordered steps recorded in ``schema_version``; each runs
in one transaction under an advisory lock, so hub nodes starting together migrate once.
"""

from __future__ import annotations

__all__ = ["PG_MIGRATIONS"]

_V1 = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS devices (
    device_id            TEXT COLLATE "C" PRIMARY KEY,
    generation_id        TEXT NOT NULL,
    device_etag          TEXT NOT NULL,
    status               TEXT COLLATE "C" NOT NULL DEFAULT 'enabled',
    status_reason        TEXT COLLATE "C",
    status_updated_time  TEXT COLLATE "C" NOT NULL,
    auth_type            TEXT COLLATE "C" NOT NULL DEFAULT 'sas',
    primary_key          TEXT,
    secondary_key        TEXT,
    primary_thumbprint   TEXT,
    secondary_thumbprint TEXT,
    capabilities         JSONB NOT NULL DEFAULT '{"iotEdge":false}',
    connection_state     TEXT COLLATE "C" NOT NULL DEFAULT 'Disconnected',
    connection_state_updated_time TEXT NOT NULL,
    last_activity_time   TEXT COLLATE "C" NOT NULL,
    c2d_message_count    BIGINT NOT NULL DEFAULT 0,
    tags                 JSONB NOT NULL DEFAULT '{}',
    desired              JSONB NOT NULL DEFAULT '{}',
    reported             JSONB NOT NULL DEFAULT '{}',
    tags_meta            JSONB NOT NULL DEFAULT '{}',
    desired_meta         JSONB NOT NULL DEFAULT '{}',
    reported_meta        JSONB NOT NULL DEFAULT '{}',
    desired_version      BIGINT NOT NULL DEFAULT 1,
    reported_version     BIGINT NOT NULL DEFAULT 1,
    twin_version         BIGINT NOT NULL DEFAULT 1,
    twin_etag            TEXT COLLATE "C" NOT NULL,
    mqtt_subscriptions   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ix_devices_connection_state ON devices (connection_state);
CREATE INDEX IF NOT EXISTS ix_devices_status ON devices (status);

CREATE TABLE IF NOT EXISTS jobs (
    job_id        TEXT COLLATE "C" PRIMARY KEY,
    type          TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_time  TEXT COLLATE "C" NOT NULL,
    doc           JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_jobs_status ON jobs (status);

CREATE TABLE IF NOT EXISTS device_jobs (
    job_id                     TEXT COLLATE "C" NOT NULL,
    device_id                  TEXT COLLATE "C" NOT NULL,
    job_type                   TEXT COLLATE "C" NOT NULL,
    status                     TEXT COLLATE "C" NOT NULL,
    start_time_utc             TEXT COLLATE "C",
    end_time_utc               TEXT COLLATE "C",
    created_date_time_utc      TEXT COLLATE "C" NOT NULL,
    last_updated_date_time_utc TEXT COLLATE "C" NOT NULL,
    outcome                    JSONB,
    error                      JSONB,
    PRIMARY KEY (job_id, device_id)
);
CREATE INDEX IF NOT EXISTS ix_device_jobs_device ON device_jobs (device_id);
CREATE INDEX IF NOT EXISTS ix_device_jobs_status ON device_jobs (job_id, status);

-- The query language's '%': C fmod (sign of the dividend), undefined (NULL) for 0.
CREATE OR REPLACE FUNCTION iot_fmod(a float8, b float8) RETURNS float8
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT a - b * trunc(a / NULLIF(b, 0))';
"""

#: Ordered steps; step N brings a database to ``schema_version`` N. Never edit a
#: released step: append a new one.
PG_MIGRATIONS: tuple[str, ...] = (
    _V1,
    # 2: the Plug and Play model id a device announced at CONNECT (``model-id``): twin ``modelId``.
    """ALTER TABLE devices ADD COLUMN IF NOT EXISTS model_id TEXT COLLATE "C" NOT NULL DEFAULT '';""",
)
