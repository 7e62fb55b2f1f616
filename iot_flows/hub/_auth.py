"""Authentication of devices (MQTT password) and services (REST ``Authorization``).

A device token must be signed with *that* device's key and name *that* device in
``sr`` (``{hostname}/devices/{id}``), so a token for one device never authenticates
another. A service token names a shared access policy (``skn``) whose permissions
must cover the operation, as in Azure (docs/iothub-reference.md §3.7, D-SAS).
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Mapping
from enum import Enum

from iot_flows._exceptions import UnauthorizedError
from iot_flows._sas import SasToken, generate_key, parse_sas_token, verify_signature
from iot_flows.store import DeviceRecord

__all__ = ["DEFAULT_POLICIES", "Permission", "ServiceAuthenticator", "check_device_token", "parse_username"]


class Permission(str, Enum):
    """IoT Hub shared-access-policy permissions."""

    REGISTRY_READ = "RegistryRead"
    REGISTRY_WRITE = "RegistryWrite"
    SERVICE_CONNECT = "ServiceConnect"
    DEVICE_CONNECT = "DeviceConnect"


#: The policies every IoT Hub starts with, and what each may do.
DEFAULT_POLICIES: dict[str, frozenset[Permission]] = {
    "iothubowner": frozenset(Permission),
    "service": frozenset({Permission.SERVICE_CONNECT}),
    "device": frozenset({Permission.DEVICE_CONNECT}),
    "registryRead": frozenset({Permission.REGISTRY_READ}),
    "registryReadWrite": frozenset({Permission.REGISTRY_READ, Permission.REGISTRY_WRITE}),
}


def _is_segment_prefix(prefix: str, uri: str) -> bool:
    """D-SAS: ``/a/b`` is a prefix of ``/a/b/c`` but not of ``/a/bc`` (case-insensitive)."""
    prefix, uri = prefix.rstrip("/").lower(), uri.lower()
    return uri == prefix or uri.startswith(prefix + "/")


def check_device_token(
    password: str, device: DeviceRecord, hostname: str, policy_keys: Mapping[str, str] | None = None
) -> SasToken:
    """Verify a device's SAS token; raise :class:`UnauthorizedError` when it is not valid.

    The two forms of D-SAS (docs/iothub-reference.md §3.7): a token signed with the device's own key
    (``sr={host}/devices/{id}``, no ``skn``), or one signed with a shared access *policy*
    that grants DeviceConnect (``skn=device``, ``skn=iothubowner``) whose ``sr`` is a
    per-segment prefix of ``{host}/devices/{id}`` (``{host}/devices`` covers every device).
    """
    try:
        token = parse_sas_token(password)
    except ValueError as exc:
        raise UnauthorizedError(f"Malformed SAS token: {exc}", error_code=401003) from None
    target = f"{hostname}/devices/{device.device_id}"
    if token.key_name:
        key = (policy_keys or {}).get(token.key_name)
        if not _is_segment_prefix(token.resource, target):
            raise UnauthorizedError("The token's resource does not cover this device.", error_code=401003)
        if key is None or Permission.DEVICE_CONNECT not in DEFAULT_POLICIES.get(token.key_name, frozenset()):
            raise UnauthorizedError(f"Policy '{token.key_name}' does not grant DeviceConnect.", error_code=401003)
        if token.is_expired():
            raise UnauthorizedError("The SAS token has expired.", error_code=401003)
        if not verify_signature(token, key):
            raise UnauthorizedError("The SAS token signature is not valid.", error_code=401003)
        return token
    if token.resource.rstrip("/").lower() != target.lower():
        raise UnauthorizedError("The token's resource does not name this device.", error_code=401003)
    if token.is_expired():
        raise UnauthorizedError("The SAS token has expired.", error_code=401003)
    keys = [k for k in (device.primary_key, device.secondary_key) if k]
    if device.auth_type != "sas" or not any(verify_signature(token, k) for k in keys):
        raise UnauthorizedError("The SAS token signature is not valid.", error_code=401003)
    return token


#: A Digital Twins model id (DTMI), e.g. ``dtmi:com:example:Thermostat;1``.
_DTMI = re.compile(r"^dtmi:[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?(?::[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?)*;[1-9][0-9]{0,8}$")


def parse_username(username: str, hostname: str, device_id: str) -> dict[str, str]:
    """Check an MQTT CONNECT username; return its query parameters (``model-id`` etc.).

    Accepted forms (D-MQTT, docs/iothub-reference.md §9): ``{host}/{deviceId}``, ``{host}/{deviceId}/``,
    ``{host}/{deviceId}/?api-version=...&DeviceClientType=...&model-id=...`` (and ``?``
    without the ``/``). The host compares case-insensitively; the device id exactly and
    not URL-decoded (docs/iothub-reference.md §1.5). Unknown parameters are kept but mean nothing; a
    ``model-id`` that is not a DTMI is dropped. Raise :class:`UnauthorizedError` when the
    username names another hub or device (or a module: not supported).
    """
    prefix = f"{hostname}/"
    if not (username[: len(prefix)].lower() == prefix.lower() and username[len(prefix) :].startswith(device_id)):
        raise UnauthorizedError("The username must be {hostname}/{deviceId}[/][?api-version=...].")
    rest = username[len(prefix) + len(device_id) :]
    if rest.startswith("/"):
        rest = rest[1:]
    if rest and not rest.startswith("?"):
        raise UnauthorizedError("The username names another identity (modules are not supported).")
    query = rest[1:]
    if "%" in query or "+" in query:
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    else:  # nothing to decode (what SDKs send): parse_qsl's result without its cost
        params = dict(part.partition("=")[::2] for part in query.split("&") if part)
    if "model-id" in params and not _DTMI.match(params["model-id"]):
        del params["model-id"]
    return params


class ServiceAuthenticator:
    """Checks ``Authorization: SharedAccessSignature ...`` against the hub's policies."""

    def __init__(self, hostname: str, policy_keys: dict[str, str]) -> None:
        self.hostname = hostname
        self.policy_keys = dict(policy_keys)
        #: header -> (policy, key it was verified with, expiry): a client sends the same
        #: token on every call, so its signature is checked once while that key stands.
        self._verified: dict[str, tuple[str, str, int]] = {}

    @staticmethod
    def generate_policy_keys(owner_key: str | None = None) -> dict[str, str]:
        """Fresh keys for every default policy (``iothubowner`` may be given)."""
        keys = {name: generate_key() for name in DEFAULT_POLICIES}
        if owner_key:
            keys["iothubowner"] = owner_key
        return keys

    def authorize(self, header: str | None, *permissions: Permission) -> str:
        """Return the policy name if the token is valid and grants any of ``permissions``."""
        if not header:
            raise UnauthorizedError("Missing Authorization header.")
        known = self._verified.get(header)
        if known is not None and self.policy_keys.get(known[0]) == known[1] and time.time() <= known[2]:
            return self._granted(known[0], permissions)
        try:
            token = parse_sas_token(header)
        except ValueError as exc:
            raise UnauthorizedError(f"Malformed Authorization header: {exc}.") from None
        host = token.resource.split("/", 1)[0].lower()
        if host != self.hostname.lower():
            raise UnauthorizedError("The token's resource does not name this hub.")
        policy = token.key_name or ""
        key = self.policy_keys.get(policy)
        if key is None or not verify_signature(token, key):
            raise UnauthorizedError("The SAS token is not valid for any shared access policy.")
        if token.is_expired():
            raise UnauthorizedError("The SAS token has expired.", error_code=401003)
        if len(self._verified) >= 1024:
            self._verified.clear()
        self._verified[header] = (policy, key, token.expiry)
        return self._granted(policy, permissions)

    @staticmethod
    def _granted(policy: str, permissions: tuple[Permission, ...]) -> str:
        granted = DEFAULT_POLICIES.get(policy, frozenset())
        if permissions and not granted.intersection(permissions):
            wanted = " or ".join(p.value for p in permissions)
            raise UnauthorizedError(f"Policy '{policy}' lacks the {wanted} permission.")
        return policy
