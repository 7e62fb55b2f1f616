"""Retry policy shared by every task: exponential backoff with jitter, retryable errors only."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

__all__ = ["RETRY", "is_retryable", "retry_if_retryable"]


def is_retryable(exc: BaseException | None) -> bool:
    """True for errors worth another try: 429, 503, 504, 404103 and transport failures.

    400, 401, 404001, 409 and 412 will fail the same way again, so they are not retried.
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
