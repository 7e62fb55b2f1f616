"""Authentication of devices (MQTT password) and services (REST ``Authorization``).

A device token must be signed with *that* device's key and name *that* device in
``sr`` (``{hostname}/devices/{id}``), so a token for one device never authenticates
another. A service token names a shared access policy (``skn``) whose permissions
must cover the operation, as in Azure (reference §3.7, D-SAS).
"""

from __future__ import annotations

from enum import Enum

from iot_flows._exceptions import UnauthorizedError
from iot_flows._sas import SasToken, generate_key, parse_sas_token, verify_signature
from iot_flows.store import DeviceRecord

__all__ = ["DEFAULT_POLICIES", "Permission", "ServiceAuthenticator", "check_device_token"]


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


def check_device_token(password: str, device: DeviceRecord, hostname: str) -> SasToken:
    """Verify a device's SAS token; raise :class:`UnauthorizedError` when it is not valid."""
    try:
        token = parse_sas_token(password)
    except ValueError as exc:
        raise UnauthorizedError(f"Malformed SAS token: {exc}", error_code=401003) from None
    expected = f"{hostname}/devices/{device.device_id}".lower()
    if token.resource.rstrip("/").lower() != expected:
        raise UnauthorizedError("The token's resource does not name this device.", error_code=401003)
    if token.key_name:
        raise UnauthorizedError("Device tokens must not name a policy.", error_code=401003)
    if token.is_expired():
        raise UnauthorizedError("The SAS token has expired.", error_code=401003)
    keys = [k for k in (device.primary_key, device.secondary_key) if k]
    if device.auth_type != "sas" or not any(verify_signature(token, k) for k in keys):
        raise UnauthorizedError("The SAS token signature is not valid.", error_code=401003)
    return token


class ServiceAuthenticator:
    """Checks ``Authorization: SharedAccessSignature ...`` against the hub's policies."""

    def __init__(self, hostname: str, policy_keys: dict[str, str]) -> None:
        self.hostname = hostname
        self.policy_keys = dict(policy_keys)

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
        granted = DEFAULT_POLICIES.get(policy, frozenset())
        if permissions and not granted.intersection(permissions):
            wanted = " or ".join(p.value for p in permissions)
            raise UnauthorizedError(f"Policy '{policy}' lacks the {wanted} permission.")
        return policy
