"""The connection profile: how ``iot-flows hub serve`` is reached, for the other commands.

``hub serve`` writes ``.iot-flows/hub.json`` in its SQLite database's folder (or where
``--profile`` / ``IOT_FLOWS_HUB_PROFILE`` says), readable by the owner only since it holds
the ``iothubowner`` connection string::

    {"hostname": "localhost", "connection_string": "HostName=localhost;SharedAccessKeyName=...",
     "base_url": "http://127.0.0.1:8080", "mqtt_host": "127.0.0.1", "mqtt_port": 1883, "tls": false}

Client commands (``fleet simulate``) read ``./.iot-flows/hub.json`` when no ``--hub`` is
given, and also when the ``--hub`` connection string names the profile's hub (its
``HostName`` is only a name, not the REST address: the profile gives the addresses).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iot_flows._sas import ConnectionString
from iot_flows._settings import DEFAULT_PROFILE

__all__ = ["HubProfile", "default_profile_path", "read_profile", "write_profile"]

_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class HubProfile:
    """Where a running hub listens, as a client on this machine reaches it."""

    hostname: str
    connection_string: str
    base_url: str
    mqtt_host: str
    mqtt_port: int
    tls: bool = False
    mqtts_port: int | None = None
    #: The hub's own certificate when it is self-signed (``--tls-cert`` from ``openssl req
    #: -x509``): what a client on this machine verifies the HTTPS REST API with.
    ca_file: str | None = None

    @classmethod
    def of(cls, hub: Any) -> HubProfile:
        """The profile of a started :class:`~iot_flows.hub.Hub` (plain MQTT, REST base URL)."""
        host = "127.0.0.1" if hub.settings.host in _ANY_ADDRESS else hub.settings.host
        url_host = f"[{host}]" if ":" in host else host
        return cls(
            hostname=hub.settings.hostname,
            connection_string=hub.connection_string(),
            base_url=f"{hub.scheme}://{url_host}:{hub.http_port}",
            mqtt_host=host,
            mqtt_port=int(hub.mqtt_port),
            tls=False,
            mqtts_port=hub.mqtts_port,
            ca_file=_self_signed(hub.settings.tls_cert) if hub.mqtts_port is not None else None,
        )

    def serves(self, connection_string: str) -> bool:
        """Whether ``connection_string`` names this profile's hub (same ``HostName``)."""
        try:
            return ConnectionString.parse(connection_string).host_name.lower() == self.hostname.lower()
        except ValueError:
            return False


def _self_signed(cert_file: str | None) -> str | None:
    """``cert_file`` as an absolute path when its first certificate is self-signed, else None."""
    if not cert_file:
        return None
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError):
        return None
    return str(Path(cert_file).resolve()) if cert.issuer == cert.subject else None


def default_profile_path(db: str) -> Path:
    """``.iot-flows/hub.json`` in the SQLite database's folder; the working directory for a URL."""
    if "://" in db:
        return DEFAULT_PROFILE
    return Path(db).parent / DEFAULT_PROFILE


def write_profile(path: Path, profile: HubProfile) -> None:
    """Write ``profile`` to ``path`` (mode 0600: it holds the owner's key), atomically: two
    hubs started at once in one folder (the nodes of "Scaling out") each replace it whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: a shared name raced
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(profile), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_profile(path: Path) -> HubProfile | None:
    """The profile at ``path``; None when there is none. Raises ValueError when it is unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the hub profile {path}: {exc}") from exc
    try:
        return HubProfile(**data)
    except TypeError as exc:
        raise ValueError(f"the hub profile {path} is not one `iot-flows hub serve` wrote: {exc}") from exc
