"""Retry policy shared by every task: exponential backoff with jitter, retryable errors only.

The rule: a task is retried only when repeating its request is safe, i.e. cannot do the
work twice. ``HubClient`` sets ``retryable`` accordingly (``iot_flows.client._repeat``):

- reads and queries: retried on 429, 5xx and transport errors;
- job creation: retried; a 409104 on the retry adopts the job the lost attempt created
  when its spec is the same (another spec raises JobAlreadyExistsError, not retried);
- job cancel: retried; a job already ``cancelled`` is the answer;
- direct methods: retried only when the request surely never reached the device:
  404103 DeviceNotOnline, 429, or a connection that could not be opened. Never after a
  504101 GatewayTimeout, a read timeout or a connection lost after sending: the device
  may have run the method, and a reboot must not run twice;
- twin patches with ``etag="*"`` are merge-patches, safe to repeat. A patch with a
  specific etag whose response was lost fails its retry with 412 (not retried).
"""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

__all__ = ["RETRY", "is_retryable", "retry_if_retryable"]


def is_retryable(exc: BaseException | None) -> bool:
    """True for errors worth another try whose request is safe to repeat (module docstring).

    429, 500, 503, 504, 404103 and transport failures are retryable, except for direct
    methods, where only 404103, 429 and a failed connect are. 400, 401, 404001, 409 and
    412 fail the same way again, so they are not retried.
    """
    return bool(getattr(exc, "retryable", False))


def retry_if_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: the failed state carries the exception as its data."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return is_retryable(data)
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we only classify it
        return is_retryable(exc)
    return False


#: Keyword arguments for ``@task``: 3 retries after 1, 2 and 4 s (+/- 50 % jitter).
RETRY: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_retryable,
}
