"""When a request may be sent again: the rules HubClient applies to make retries safe.

A retry is safe when repeating the request cannot do the work twice. The client makes
each retried operation safe, or marks its error as not retryable:

- **Reads** (GET, queries) are safe to repeat.
- **Creating a job** (``PUT /jobs/v2/{id}``): when the first PUT reached the hub and its
  response was lost, the retry gets 409104 JobAlreadyExists. The client then reads the job
  and adopts it when it carries the same spec (:func:`same_job_spec`); another spec under
  that id is a real conflict and is raised.
- **Cancelling a job**: a repeated cancel gets 409105; the client reads the job and
  returns it when it is already ``cancelled``.
- **Direct methods** run on the device: a retry is allowed only when the request surely
  never reached it (:func:`method_never_delivered`): 404103 DeviceNotOnline, 429 throttled,
  or a connection that could not be opened. A 504101 GatewayTimeout, a read timeout or a
  connection lost after sending may mean the device ran the method (a reboot must not run
  twice): those errors are marked ``retryable = False``.
"""

from __future__ import annotations

from typing import Any

from iot_flows._exceptions import ConnectError, DeviceNotOnlineError, ThrottledError
from iot_flows._time import parse_time

__all__ = ["method_never_delivered", "same_job_spec"]

#: Keys of a job request that define what it does (``jobId`` is the key, not the spec).
_SPEC_KEYS = ("type", "queryCondition", "cloudToDeviceMethod", "updateTwin", "startTime", "maxExecutionTimeInSeconds",
              "waitForOfflineDevices")  # fmt: skip


def method_never_delivered(exc: BaseException) -> bool:
    """True when a failed direct-method request surely did not reach the device.

    404103 (device not online), 429 (throttled before dispatch) and a connection that
    could not be opened (:class:`ConnectError`) qualify; anything after the request was
    sent (504101, read timeouts, dropped connections, 5xx) does not.
    """
    return isinstance(exc, (DeviceNotOnlineError, ThrottledError, ConnectError))


def _same(sent: Any, existing: Any, key: str) -> bool:
    if key == "startTime" and isinstance(sent, str) and isinstance(existing, str):
        try:
            return parse_time(sent) == parse_time(existing)
        except ValueError:
            return sent == existing
    if isinstance(sent, dict):
        if not isinstance(existing, dict):
            return False
        return all(_same(value, existing.get(k), k) for k, value in sent.items())
    return bool(sent == existing)


def same_job_spec(sent: dict[str, Any], existing: dict[str, Any]) -> bool:
    """True when the job ``existing`` (as ``GET /jobs/v2/{id}`` returns it) is the job ``sent``.

    Every spec field present in ``sent`` must be equal in ``existing`` (times compared as
    instants; fields the hub fills in, such as default timeouts, are not required in
    ``sent``). ``waitForOfflineDevices`` (an iot-flows extension Azure does not echo) is
    compared only when ``existing`` has it.
    """
    for key in _SPEC_KEYS:
        if key not in sent:
            continue
        if key == "waitForOfflineDevices" and key not in existing:
            continue
        if not _same(sent[key], existing.get(key), key):
            return False
    return True
