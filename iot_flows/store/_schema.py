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
``modelId``                             ``model_id``
``capabilities.iotEdge``                ``json_extract(capabilities, '$.iotEdge')``
``tags.a.b``                            ``json_extract(tags, '$.a.b')``
``properties.desired.a``                ``json_extract(desired, '$.a')``
``properties.reported.a``               ``json_extract(reported, '$.a')``
``properties.desired.$version``         ``desired_version`` (reported likewise)
=====================================  ===========================================
"""



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
    twin_etag            TEXT NOT NULL,
    -- MQTT persistent session (clean_session=0): subscribed IoT Hub topic filters, so a
    -- device that does not re-subscribe after a hub restart still gets its messages.
    mqtt_subscriptions   TEXT NOT NULL DEFAULT ''
);

CREATE INDEX IF NOT EXISTS ix_devices_connection_state ON devices (connection_state);
CREATE INDEX IF NOT EXISTS ix_devices_status ON devices (status);
"""

# Jobs (issue: jobs engine). ``doc`` holds the JobResponse JSON as served; hot fields are
# columns so ``/jobs/v2/query`` can filter without parsing.
JOBS_DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id        TEXT PRIMARY KEY,
    type          TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_time  TEXT NOT NULL,
    doc           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_jobs_status ON jobs (status);

-- Per-device job records, queried with SELECT * FROM devices.jobs WHERE devices.jobs.<field> ...
--   devices.jobs.jobId                  -> job_id
--   devices.jobs.deviceId               -> device_id
--   devices.jobs.jobType                -> job_type
--   devices.jobs.status                 -> status  (pending|scheduled|running|completed|failed|canceled)
--   devices.jobs.startTimeUtc           -> start_time_utc
--   devices.jobs.endTimeUtc             -> end_time_utc
--   devices.jobs.createdDateTimeUtc     -> created_date_time_utc  (alias createdTimeUtc: doc quirk)
--   devices.jobs.lastUpdatedDateTimeUtc -> last_updated_date_time_utc
--   devices.jobs.outcome / .error       -> JSON text columns (NULL when absent)
CREATE TABLE IF NOT EXISTS device_jobs (
    job_id                     TEXT NOT NULL,
    device_id                  TEXT NOT NULL,
    job_type                   TEXT NOT NULL,
    status                     TEXT NOT NULL,
    start_time_utc             TEXT,
    end_time_utc               TEXT,
    created_date_time_utc      TEXT NOT NULL,
    last_updated_date_time_utc TEXT NOT NULL,
    outcome                    TEXT,
    error                      TEXT,
    PRIMARY KEY (job_id, device_id)
);
CREATE INDEX IF NOT EXISTS ix_device_jobs_device ON device_jobs (device_id);
CREATE INDEX IF NOT EXISTS ix_device_jobs_status ON device_jobs (job_id, status);
"""

#: Ordered schema steps; step N brings a database to ``schema_version`` N. Never edit a
#: released step: append a new one (each runs in one transaction).
SQLITE_MIGRATIONS: tuple[str, ...] = (
    DDL + JOBS_DDL,
    # 2: the Plug and Play model id a device announced at CONNECT (``model-id``): twin ``modelId``.
    "ALTER TABLE devices ADD COLUMN model_id TEXT NOT NULL DEFAULT '';",
)
SCHEMA_VERSION = len(SQLITE_MIGRATIONS)
