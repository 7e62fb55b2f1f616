"""Shared access signatures (SAS) and IoT Hub connection strings.

Token format (docs/iothub-reference.md §3.7)::

    SharedAccessSignature sr={urlencoded uri}&sig={urlencoded b64 hmac}&se={expiry}[&skn={policy}]

The string to sign is ``urlencoded(uri) + "\\n" + expiry``; the HMAC-SHA256 key is the
*base64-decoded* shared key. Device tokens have no ``skn``; service tokens name a policy.
Parsing is lenient on purpose: SDKs percent-encode ``sr`` with upper- or lower-case
hex, and the Python service SDK leaves ``/`` in the signature un-encoded.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "ConnectionString",
    "SasToken",
    "generate_key",
    "generate_sas_token",
    "parse_sas_token",
    "verify_signature",
]

#: Tolerated clock skew between a token's issuer and the hub (IoT Hub allows ~5 minutes).
CLOCK_SKEW_SECONDS = 300


def generate_key(nbytes: int = 32) -> str:
    """Return a fresh random base64 key, like the keys IoT Hub generates."""
    return base64.b64encode(secrets.token_bytes(nbytes)).decode()


@functools.lru_cache(maxsize=4096)
def _keyed(key_b64: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed with the decoded key, before any message (copied per signature:
    a hub checks one device key per connect, and re-keying is half of an HMAC's cost)."""
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("shared access key is not valid base64") from exc
    return hmac.new(key, digestmod=hashlib.sha256)


def _sign(key_b64: str, encoded_uri: str, expiry: int) -> str:
    mac = _keyed(key_b64).copy()
    mac.update(f"{encoded_uri}\n{expiry}".encode())
    return base64.b64encode(mac.digest()).decode()


def generate_sas_token(
    uri: str, key_b64: str, *, ttl: int = 3600, policy: str | None = None, expiry: int | None = None
) -> str:
    """Build a SAS token for ``uri`` (e.g. ``host/devices/d1`` or ``host``), valid ``ttl`` seconds."""
    se = int(expiry if expiry is not None else time.time() + ttl)
    encoded_uri = urllib.parse.quote(uri, safe="")
    sig = urllib.parse.quote(_sign(key_b64, encoded_uri, se), safe="")
    token = f"SharedAccessSignature sr={encoded_uri}&sig={sig}&se={se}"
    if policy:
        token += f"&skn={urllib.parse.quote(policy, safe='')}"
    return token


@dataclass(frozen=True, slots=True)
class SasToken:
    """A parsed SAS token; ``encoded_resource`` is ``sr`` exactly as transmitted."""

    resource: str
    encoded_resource: str
    signature: str
    expiry: int
    key_name: str | None

    def is_expired(self, now: float | None = None, *, skew: float = 0) -> bool:
        """True once the expiry (plus ``skew`` seconds of tolerated clock skew) has passed."""
        return (now if now is not None else time.time()) > self.expiry + skew


#: ``%XX`` of the ASCII range -> the character (what SAS fields carry: ``%2F``, ``%2B``, ``%3D``).
_ASCII_ESCAPES = {f"{b:02{case}}": chr(b) for b in range(0x80) for case in "xX"}


def _unquote(text: str) -> str:
    """``urllib.parse.unquote`` with a fast path for ASCII escapes (a third of a connect's
    token parsing went into it); anything else is left to ``unquote``."""
    if "%" not in text:
        return text
    head, *rest = text.split("%")
    out = [head]
    for part in rest:
        char = _ASCII_ESCAPES.get(part[:2])
        if char is None:
            return urllib.parse.unquote(text)
        out.append(char)
        out.append(part[2:])
    return "".join(out)


def parse_sas_token(token: str) -> SasToken:
    """Parse a SAS token; raise ``ValueError`` when it is not one."""
    token = token.strip()
    prefix = "SharedAccessSignature "
    if not token.startswith(prefix):
        raise ValueError("not a SharedAccessSignature token")
    fields: dict[str, str] = {}
    for part in token[len(prefix) :].split("&"):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"malformed SAS field {part!r}")
        fields[name.strip()] = value.strip()
    try:
        encoded_sr, sig, se = fields["sr"], fields["sig"], fields["se"]
    except KeyError as exc:
        raise ValueError(f"SAS token lacks {exc.args[0]!r}") from exc
    try:
        expiry = int(se)
    except ValueError as exc:
        raise ValueError("SAS expiry is not an integer") from exc
    skn = fields.get("skn")
    return SasToken(
        resource=_unquote(encoded_sr),
        encoded_resource=encoded_sr,
        signature=_unquote(sig),
        expiry=expiry,
        key_name=_unquote(skn) if skn is not None else None,
    )


def verify_signature(token: SasToken, key_b64: str) -> bool:
    """True when ``token`` was signed with ``key_b64``.

    The signed string is ``sr`` as transmitted; because encoders differ in hex case,
    the upper- and lower-case encodings of the decoded resource are tried as well.
    """

    def candidates() -> Iterator[str]:  # the transmitted form first: it is almost always the one
        yield token.encoded_resource
        quoted = urllib.parse.quote(token.resource, safe="")
        yield from (quoted, quoted.replace("%2F", "%2f").replace("%3A", "%3a"))

    tried = set()
    for encoded in candidates():
        if encoded in tried:
            continue
        tried.add(encoded)
        try:
            expected = _sign(key_b64, encoded, token.expiry)
        except ValueError:
            return False
        if hmac.compare_digest(expected, token.signature):
            return True
    return False


@dataclass(frozen=True, slots=True)
class ConnectionString:
    """An IoT Hub connection string (service: with ``SharedAccessKeyName``; device: with ``DeviceId``)."""

    host_name: str
    shared_access_key: str
    shared_access_key_name: str | None = None
    device_id: str | None = None
    module_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> ConnectionString:
        """Parse ``Key=Value;Key=Value`` (values may contain ``=``, as base64 keys do)."""
        fields: dict[str, str] = {}
        for part in text.strip().split(";"):
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"malformed connection string field {part!r}")
            fields[name.strip().lower()] = value.strip()
        try:
            host, key = fields["hostname"], fields["sharedaccesskey"]
        except KeyError as exc:
            raise ValueError(f"connection string lacks {exc.args[0]!r}") from exc
        return cls(
            host_name=host,
            shared_access_key=key,
            shared_access_key_name=fields.get("sharedaccesskeyname"),
            device_id=fields.get("deviceid"),
            module_id=fields.get("moduleid"),
        )

    def __str__(self) -> str:
        parts = [f"HostName={self.host_name}"]
        if self.device_id:
            parts.append(f"DeviceId={self.device_id}")
        if self.module_id:
            parts.append(f"ModuleId={self.module_id}")
        if self.shared_access_key_name:
            parts.append(f"SharedAccessKeyName={self.shared_access_key_name}")
        parts.append(f"SharedAccessKey={self.shared_access_key}")
        return ";".join(parts)

    def token(self, *, ttl: int = 3600) -> str:
        """A fresh SAS token for this identity (device or service policy)."""
        if self.device_id:
            uri = f"{self.host_name}/devices/{self.device_id}"
            if self.module_id:
                uri += f"/modules/{self.module_id}"
            return generate_sas_token(uri, self.shared_access_key, ttl=ttl)
        return generate_sas_token(
            self.host_name, self.shared_access_key, ttl=ttl, policy=self.shared_access_key_name
        )
