"""Every setting of every component, declared once (pydantic-settings).

One model per component; each reads ``IOT_FLOWS_<AREA>_<FIELD>`` environment variables:

=====================  ======================  ===============================================
model                  environment prefix      used by
=====================  ======================  ===============================================
``HubSettings``        ``IOT_FLOWS_HUB_``      ``Hub``, ``iot-flows hub serve``, ``serve_hub``
``JobSettings``        ``IOT_FLOWS_JOBS_``     the hub's jobs engine (``HubSettings.jobs``)
``ClientSettings``     ``IOT_FLOWS_HUB_``      which hub client-side commands and flows use
``FleetSettings``      ``IOT_FLOWS_FLEET_``    ``iot-flows fleet simulate``
``SimulatorSettings``  ``IOT_FLOWS_FLEET_``    simulated devices' timings and fault rates
                                               (generated from ``BehaviourConfig``)
``DemoSettings``       ``IOT_FLOWS_DEMO_``     ``iot-flows demo`` / ``./scripts/demo``
=====================  ======================  ===============================================

A value given to the constructor wins over the environment, which wins over the default;
the command line passes only the flags a user typed, so a flag beats an environment
variable. The ``iot-flows`` options are generated from these fields
(:mod:`iot_flows.cli._options`), and so is the README's configuration table
(``python -m iot_flows.cli._options``). To add a setting, add a field here (with a
``description``); it becomes a flag and an environment variable.

``ClientSettings`` shares the ``IOT_FLOWS_HUB_`` prefix with ``HubSettings`` (its fields
are how a client reaches *the hub*); their field names are disjoint.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_HOSTNAME",
    "DEFAULT_PROFILE",
    "ClientSettings",
    "Cli",
    "DemoSettings",
    "FleetSettings",
    "HubSettings",
    "JobSettings",
    "QuotaTier",
    "SimulatorSettings",
]

#: The hub's name in connection strings, SAS ``sr`` values and MQTT usernames. Dotted,
#: because the C device SDK splits HostName at the first '.' and refuses a name without
#: one; an IP literal resolves everywhere without DNS (docs/azure-contract.md "Host name").
DEFAULT_HOSTNAME = "127.0.0.1"
#: Where ``iot-flows hub serve`` writes how to reach it, relative to the working directory.
DEFAULT_PROFILE = Path(".iot-flows") / "hub.json"


@dataclass(frozen=True)
class Cli:
    """How a field appears on the command line (metadata in ``Annotated[..., Cli(...)]``).

    Attributes:
        names: the option's names, replacing the default ``--field-name`` (the first is
            the canonical one; the others keep older spellings working).
        panel: the ``--help`` section it is listed in.
        hidden: not a command-line option (environment and constructor only).
    """

    names: tuple[str, ...] = ()
    panel: str | None = None
    hidden: bool = False
    #: For a nested model: its fields become ``--{prefix}{field-name}``.
    prefix: str = ""


_QUOTA = "Azure throttling"


class QuotaTier(str, Enum):
    """An IoT Hub pricing tier whose throttles ``hub serve --quota`` applies (docs/iothub-reference.md §6)."""

    OFF = "off"
    FREE = "free"
    S1 = "s1"
    S2 = "s2"
    S3 = "s3"


def _config(area: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=f"IOT_FLOWS_{area}_", frozen=True, extra="forbid", populate_by_name=True)


class JobSettings(BaseSettings):
    """Limits of the hub's jobs engine (``IOT_FLOWS_JOBS_*``)."""

    model_config = _config("JOBS")

    max_concurrent_jobs: Annotated[int, Cli(names=("--max-concurrent-jobs",))] = Field(
        default=10, ge=1, description="Active (queued/scheduled/running) jobs at once; Azure S1 allows 1."
    )
    device_concurrency: int = Field(default=1000, ge=1, description="In-flight device operations per job.")
    batch_size: int = Field(default=500, ge=1, description="Device records marked running / committed per transaction.")
    subscribe_grace_seconds: float = Field(
        default=2.0, ge=0, description="How long a job waits for a just-connected device's method SUBSCRIBE."
    )


_TLS = "TLS"
_CLUSTER = "Several nodes"


class HubSettings(BaseSettings):
    """How a hub listens and where it stores (``IOT_FLOWS_HUB_*``). Port 0 picks a free port."""

    model_config = _config("HUB")

    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    hostname: str = Field(
        default=DEFAULT_HOSTNAME,
        description="The hub's HostName (connection strings, SAS 'sr', MQTT usernames); must contain a '.' for "
        "C SDK firmware.",
    )
    mqtt_port: int = Field(default=1883, ge=0, le=65535, description="Plain MQTT port.")
    http_port: int = Field(default=8080, ge=0, le=65535, description="Service REST API port.")
    mqtts_port: Annotated[int, Cli(panel=_TLS)] = Field(
        default=8883, ge=0, le=65535, description="MQTT over TLS port (with --tls-cert/--tls-key)."
    )
    db: str = Field(
        default="iot-flows-hub.db",
        description="Where the hub stores: a SQLite file (or sqlite:///path), or postgresql://user@host:port/dbname.",
    )
    db_pool_size: int = Field(
        default=20, ge=2, le=1000,
        description="PostgreSQL: most connections this hub opens (concurrent twin writes share them by group commit).",
    )  # fmt: skip
    db_acquire_timeout: float = Field(
        default=10.0, gt=0, description="PostgreSQL: seconds a request waits for a free connection before it answers 503."
    )
    tls_cert: Annotated[str | None, Cli(panel=_TLS)] = Field(
        default=None, description="PEM certificate (chain) for TLS."
    )
    tls_key: Annotated[str | None, Cli(panel=_TLS)] = Field(default=None, description="PEM private key for TLS.")
    owner_key: Annotated[str | None, Cli(hidden=True)] = Field(
        default=None, repr=False, description="The iothubowner key (base64); default: generated once, kept in the db."
    )
    profile: str = Field(
        default="",
        description="Where `hub serve` writes how to reach it, for the other commands; default "
        ".iot-flows/hub.json in the SQLite database's folder.",
    )
    quota: Annotated[QuotaTier, Cli(panel=_QUOTA)] = Field(
        default=QuotaTier.OFF,
        description="Apply IoT Hub's documented per-tier throttles (twin reads/updates, direct methods, jobs, "
        "queries, registry, device connections, telemetry) with Azure's 429 answers; off: no throttling.",
    )
    quota_units: Annotated[int, Cli(panel=_QUOTA)] = Field(
        default=1, ge=1, le=200, description="IoT Hub units of the --quota tier (throttles scale per unit)."
    )
    max_connections: int = Field(
        default=0, ge=0,
        description="Most MQTT connections this hub accepts (Mosquitto's max_connections); 0: the open-files limit "
        "less 256 kept for the REST API and the store. Beyond it a device's socket is closed at once (it retries).",
    )  # fmt: skip
    log_level: str = Field(default="WARNING", description="Python log level of `hub serve`.")
    loop: str = Field(
        default="auto", pattern="^(auto|uvloop|asyncio)$",
        description="Event loop of `hub serve`: uvloop (pip install uvloop, in the `hub` extra), asyncio, "
        "or auto (uvloop when installed).",
    )
    change_feed_capacity: int = Field(
        default=50_000, ge=1, description="Changes kept in memory for GET /iot-flows/changes (~200 bytes each); a "
        "reader further behind is told `truncated`.",
    )
    jobs: Annotated[JobSettings, Cli(prefix="job-")] = Field(default_factory=lambda: JobSettings())
    # Several nodes (iot_flows.hub.cluster): N hubs sharing --db (PostgreSQL) and one NATS.
    bus: Annotated[str | None, Cli(panel=_CLUSTER)] = Field(
        default=None, description="NATS URL (nats://host:4222): run as one node of several sharing --db."
    )
    node_id: Annotated[str | None, Cli(panel=_CLUSTER)] = Field(
        default=None, description="This node's unique name with --bus (default: <hostname>-<pid>)."
    )
    node_lease_seconds: Annotated[float, Cli(panel=_CLUSTER)] = Field(
        default=10.0, ge=0.5, description="With --bus: a silent node loses its devices and jobs after this long."
    )


class ClientSettings(BaseSettings):
    """Which hub the client-side commands and flows talk to (``IOT_FLOWS_HUB_*``).

    Resolution: a flag, else the environment, else the profile ``hub serve`` wrote.
    """

    model_config = _config("HUB")

    connection_string: Annotated[str | None, Cli(names=("--hub",))] = Field(
        default=None,
        repr=False,
        description="Service connection string (with SharedAccessKeyName); default: the profile's.",
    )
    url: Annotated[str | None, Cli(names=("--hub-url", "--http-url"))] = Field(
        default=None,
        description="Service REST base URL; default: the profile's when its HostName matches, else https://HostName.",
    )
    profile: str = Field(default=str(DEFAULT_PROFILE), description="The connection profile `hub serve` wrote.")
    ca_file: Annotated[str | None, Cli(hidden=True)] = Field(
        default=None,
        description="CA certificate (PEM) to verify the hub's HTTPS; default: the profile's for a self-signed"
        " --tls-cert, else the system's.",
    )
    connection: Annotated[str | None, Cli(hidden=True)] = Field(
        default=None, description="Name of a saved HubConnection block the flows use when none is passed."
    )


# ---- the simulator: its fields are BehaviourConfig's, so they are declared once, there -----
_RATE = "Fault injection (rates 0..1)"
_TIMING = "Timings (seconds)"
_BEHAVIOUR_CLI: dict[str, tuple[str, dict[str, Any], Cli | None]] = {
    # name: (help, extra constraints, command-line names) -- type and default come from the class.
    "reboot_seconds": ("Offline time of a reboot.", {}, None),
    "factory_reset_seconds": ("Offline time of a factory reset.", {}, None),
    "fw_wait_seconds": ("Firmware update: time in 'waiting' before the download.", {}, None),
    "fw_download_seconds": ("Firmware update: download time.", {}, None),
    "fw_apply_seconds": ("Firmware update: apply time.", {}, None),
    "fw_reboot_seconds": ("Offline time after applying firmware (0: no reboot).", {}, None),
    "config_apply_seconds": ("Time to apply a desired configuration.", {}, None),
    "jitter": ("Random variation of every step: duration * (1 +- jitter).", {"ge": 0, "le": 1}, None),
    "factory_firmware_version": ("Firmware version of a new (or factory-reset) device.", {}, None),
    "download_failure_rate": ("Firmware downloads that fail (downloadFailed).", {}, None),
    "apply_failure_rate": ("Firmware applies that fail (applyFailed).", {}, None),
    "hang_rate": ("Updates accepted but never reported.", {}, None),
    "config_failure_rate": ("Configuration applies that fail.", {}, None),
    "slow_rate": ("Share of slow responders.", {}, None),
    "slow_reply_seconds": ("How late a slow responder answers a direct method.", {}, None),
    "slow_factor": ("How much longer a slow responder's steps take.", {"ge": 1}, None),
    "churn_rate": ("Share of devices dropped per churn interval.", {}, None),
    "churn_interval_seconds": (
        "How often devices are dropped.",
        {"gt": 0},
        Cli(names=("--churn-interval-seconds", "--churn-interval")),
    ),
    "churn_offline_seconds": ("How long a dropped device stays offline.", {}, None),
    "window_recheck_seconds": ("Longest sleep between maintenance-window checks.", {"gt": 0}, None),
    "report_initial_state": ("Report firmware version etc. on the first connect when the twin lacks it.", {}, None),
}


def _behaviour_field(field: dataclasses.Field[Any], annotation: Any) -> tuple[Any, Any]:
    help_text, extra, cli = _BEHAVIOUR_CLI.get(field.name, ("", {}, None))
    if field.name.endswith("_rate"):
        extra = {"ge": 0, "le": 1, **extra}
        panel = _RATE
    elif field.name.startswith("churn") or field.name.startswith("slow"):
        extra = {"ge": 0, **extra}
        panel = _RATE
    elif field.name.endswith("_seconds"):
        extra = {"ge": 0, **extra}
        panel = _TIMING
    else:
        panel = "Device behaviour"
    meta = dataclasses.replace(cli or Cli(), panel=panel)
    return Annotated[annotation, meta], Field(default=field.default, description=help_text or None, **extra)


def _simulator_settings() -> type[BaseSettings]:
    from iot_flows.device import BehaviourConfig

    hints = typing.get_type_hints(BehaviourConfig)
    fields = {f.name: _behaviour_field(f, hints[f.name]) for f in dataclasses.fields(BehaviourConfig)}
    model: type[BaseSettings] = create_model(  # type: ignore[call-overload]
        "SimulatorSettings", __base__=_SimulatorBase, __module__=__name__, **fields
    )
    model.__doc__ = (
        "Timings and fault rates of simulated devices (``IOT_FLOWS_FLEET_*``): ``BehaviourConfig``'s fields."
    )
    return model


class _SimulatorBase(BaseSettings):
    model_config = _config("FLEET")


#: Generated from ``BehaviourConfig`` on first use (see ``__getattr__``).
SimulatorSettings: type[BaseSettings]
_simulator: type[BaseSettings] | None = None


def __getattr__(name: str) -> Any:
    # ``SimulatorSettings`` is generated from ``BehaviourConfig`` on first use, so that
    # importing the hub's settings does not import the device side.
    global _simulator
    if name == "SimulatorSettings":
        if _simulator is None:
            _simulator = _simulator_settings()
        return _simulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CONN = "Connection"
_TAGS = "Twin tags"


class FleetSettings(BaseSettings):
    """``iot-flows fleet simulate`` (``IOT_FLOWS_FLEET_*``); the hub comes from :class:`ClientSettings`."""

    model_config = _config("FLEET")

    count: Annotated[int, Cli(names=("--count", "-n"))] = Field(default=100, ge=0, description="Number of devices.")
    prefix: str = Field(default="sim", description="Device ids are {prefix}-{index:05d}.")
    start_index: int = Field(default=0, ge=0, description="First device index.")
    mqtt_host: Annotated[str | None, Cli(panel=_CONN)] = Field(
        default=None, description="MQTT host (default: the profile's, else HostName)."
    )
    mqtt_port: Annotated[int | None, Cli(panel=_CONN)] = Field(
        default=None,
        ge=1,
        le=65535,
        description="MQTT port (default: the profile's, else 8883 with TLS, 1883 without).",
    )
    tls: Annotated[bool | None, Cli(panel=_CONN)] = Field(
        default=None, description="MQTT over TLS (default: the profile's, else with --ca-file or without --mqtt-host)."
    )
    ca_file: Annotated[str | None, Cli(panel=_CONN)] = Field(
        default=None, description="CA certificate (PEM) to verify the hub."
    )
    provision: Annotated[bool, Cli(panel=_CONN)] = Field(
        default=True, description="Create/update the devices first (bulk API)."
    )
    connect_concurrency: Annotated[int, Cli(panel=_CONN)] = Field(
        default=256, ge=1, description="Devices connecting at once."
    )
    keepalive: Annotated[int, Cli(panel=_CONN)] = Field(default=60, ge=5, description="MQTT keep-alive (seconds).")
    token_ttl: Annotated[int, Cli(panel=_CONN)] = Field(
        default=3600, ge=5, description="Device SAS token lifetime (seconds)."
    )
    seed: int = Field(default=0, description="Seed for fault injection.")
    tags: Annotated[str | None, Cli(panel=_TAGS)] = Field(
        default=None, description="Twin tags on every device: building=43,ring=canary."
    )
    spread: Annotated[list[str], Cli(panel=_TAGS)] = Field(
        default_factory=list,
        description="Spread a tag over id ranges by weight: ring=canary:1,wave1:9,wave2:90 (repeat; each splits "
        "the groups of the one before).",
    )
    duration: float = Field(default=0.0, ge=0, description="Stop after this many seconds (0: until Ctrl-C).")
    json_stats: Annotated[bool, Cli(names=("--json",))] = Field(
        default=False, description="Print the final stats as one JSON line."
    )
    log_level: str = Field(default="WARNING", description="Python log level.")


class DemoSettings(BaseSettings):
    """``iot-flows demo`` / ``./scripts/demo`` (``IOT_FLOWS_DEMO_*``)."""

    model_config = _config("DEMO")

    devices: int = Field(default=1000, ge=10, description="Simulated devices.")
    quick: bool = Field(default=False, description="100 devices, for a fast run (instead of --devices).")
    only: list[str] = Field(
        default_factory=list,
        description="Run only this scenario (repeatable), e.g. --only lock-doors; a scenario that reads what an "
        "omitted one writes is then checked for state and device count only.",
    )
    verbose: bool = Field(default=False, description="Also show Prefect's flow and task logs.")
