"""SAS tokens, connection strings and the exception table."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse

import pytest

from iot_flows import _exceptions as exc
from iot_flows._sas import ConnectionString, generate_sas_token, parse_sas_token, verify_signature

KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_token_matches_the_documented_algorithm():
    token = generate_sas_token("myhub.azure-devices.net/devices/dev1", KEY, expiry=1700000000)
    sr = urllib.parse.quote("myhub.azure-devices.net/devices/dev1", safe="")
    expected = base64.b64encode(hmac.new(base64.b64decode(KEY), f"{sr}\n1700000000".encode(), hashlib.sha256).digest()).decode()
    assert token == f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(expected, safe='')}&se=1700000000"


def test_parse_and_verify_roundtrip_and_tamper():
    token = parse_sas_token(generate_sas_token("hub", KEY, policy="service", ttl=60))
    assert token.resource == "hub" and token.key_name == "service" and not token.is_expired()
    assert verify_signature(token, KEY)
    other = base64.b64encode(b"x" * 32).decode()
    assert not verify_signature(token, other)
    forged = parse_sas_token(generate_sas_token("hub", KEY, policy="service", ttl=60).replace("se=", "se=1"))
    assert not verify_signature(forged, KEY)


def test_lower_case_percent_encoding_is_accepted():
    uri = "hub/devices/d1"
    lower = urllib.parse.quote(uri, safe="").replace("%2F", "%2f")
    se = int(time.time()) + 60
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), f"{lower}\n{se}".encode(), hashlib.sha256).digest()).decode()
    token = parse_sas_token(f"SharedAccessSignature sr={lower}&sig={urllib.parse.quote(sig, safe='')}&se={se}")
    assert token.resource == uri and verify_signature(token, KEY)


@pytest.mark.parametrize("bad", ["", "Bearer x", "SharedAccessSignature sr=a&se=1", "SharedAccessSignature sr=a&sig=b&se=x",
                                 "SharedAccessSignature junk"])
def test_malformed_tokens_raise_value_error(bad):
    with pytest.raises(ValueError):
        parse_sas_token(bad)


def test_connection_strings():
    cs = ConnectionString.parse(f"HostName=h.example;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}")
    assert cs.shared_access_key_name == "iothubowner" and cs.device_id is None
    assert str(cs) == f"HostName=h.example;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
    dev = ConnectionString.parse(f"HostName=h;DeviceId=d1;SharedAccessKey={KEY}")
    assert parse_sas_token(dev.token()).resource == "h/devices/d1"
    with pytest.raises(ValueError):
        ConnectionString.parse("HostName=h")


@pytest.mark.parametrize("status,code,cls", [
    (400, 400004, exc.BadRequestError), (401, 401002, exc.UnauthorizedError), (404, 404001, exc.DeviceNotFoundError),
    (404, 404002, exc.JobNotFoundError), (404, 404103, exc.DeviceNotOnlineError), (409, 409001, exc.DeviceAlreadyExistsError),
    (409, 409104, exc.JobAlreadyExistsError), (412, 412001, exc.PreconditionFailedError), (413, 413001, exc.PayloadTooLargeError),
    (429, 429001, exc.ThrottledError), (500, 500001, exc.InternalServerError), (503, 503001, exc.ServiceUnavailableError),
    (504, 504101, exc.GatewayTimeoutError),
])
def test_error_for_status_picks_the_most_specific_class(status, code, cls):
    err = exc.error_for_status(status, "m", code)
    assert type(err) is cls and err.status_code == status and err.error_code == code


def test_unknown_status_keeps_the_number_and_retryability_is_declared():
    err = exc.error_for_status(418, "teapot")
    assert type(err) is exc.HubError and err.status_code == 418
    assert exc.ThrottledError.retryable and exc.ServiceUnavailableError.retryable and exc.GatewayTimeoutError.retryable
    assert not exc.BadRequestError.retryable and not exc.UnauthorizedError.retryable
    assert not exc.PreconditionFailedError.retryable and not exc.DeviceNotFoundError.retryable


def test_every_exception_is_exported():
    public = {name for name, obj in vars(exc).items() if isinstance(obj, type) and issubclass(obj, exc.IoTFlowsError)}
    assert public <= set(exc.__all__)
