"""What an operator sees of a fleet flow run in the Prefect UI.

* artifact keys: stable per operation (``fleet-report``, ``rollout-2-1-0``,
  ``method-job-lockdoor``), so the Artifacts page keeps a history across runs;
* run names built from parameters (``lockDoor · tags.building = '43'``);
* outcome counts (``10 done: 0 succeeded, 10 failed``) for logs, state messages, artifacts;
* zero targets made visible: a warning, ``0 devices matched <condition>`` in the final
  state message, and :class:`TooFewDevicesError` below ``min_devices``;
* flat parameter overrides (``prefect deployment run ... --param version=2.2.0``) merged
  into a flow's ``request`` model and validated again (the error names the field).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import State, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.context import FlowRunContext
from prefect.states import Completed
from pydantic import BaseModel, ValidationError

from iot_flows._exceptions import OperationFailedError

__all__ = [
    "TooFewDevicesError",
    "apply_overrides",
    "artifact_key",
    "check_matched",
    "completed",
    "outcome_line",
    "param",
    "report_outcome",
    "run_name",
]

M = TypeVar("M", bound=BaseModel)
_NOT_KEY = re.compile(r"[^a-z0-9-]+")


class TooFewDevicesError(OperationFailedError):
    """Fewer devices matched the flow's condition than its ``min_devices`` parameter asks for."""


def artifact_key(*parts: object) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from ``parts``.

    ``artifact_key("rollout", "2.1.0")`` -> ``"rollout-2-1-0"``.
    """
    text = "-".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"-{2,}", "-", _NOT_KEY.sub("-", text.lower())).strip("-")[:200] or "iot-flows"


def n_devices(count: int) -> str:
    """``"1 device"``, ``"2 devices"``: a count of devices for messages and descriptions."""
    return f"{count} device" if count == 1 else f"{count} devices"


def outcome_line(done: int, succeeded: int, failed: int, **others: int) -> str:
    """``"10 done: 0 succeeded, 10 failed"`` (plus any non-zero ``others``, e.g. ``timed_out=2``)."""
    extra = "".join(f", {n} {name.replace('_', ' ')}" for name, n in others.items() if n)
    return f"{done} done: {succeeded} succeeded, {failed} failed{extra}"


def check_matched(count: int, condition: str, min_devices: int, what: str) -> str | None:
    """Make a small or empty target set visible.

    Logs a warning when no device matched ``condition``.

    Returns:
        ``"0 devices matched <condition>"`` when ``count`` is 0 (for the state message and
        the artifact), else None.

    Raises:
        TooFewDevicesError: ``count < min_devices``.
    """
    if count == 0:
        get_run_logger().warning("0 devices matched %s: %s did nothing", condition, what)
    if count < min_devices:
        raise TooFewDevicesError(
            f"{n_devices(count)} matched {condition}; {what} needs at least {min_devices} (parameter min_devices)"
        )
    return f"0 devices matched {condition}" if count == 0 else None


async def report_outcome(
    what: str,
    device_count: int,
    condition: str,
    min_devices: int,
    counts: str,
    rows: list[dict[str, Any]],
    *,
    key: str,
    description: str,
    message: str,
) -> str:
    """Show a flow's outcome: the table artifact ``key`` with ``rows``, and the log line ``<what>: <counts>``.

    Returns the final state's message: ``message``, or ``0 devices matched <condition>`` when
    ``device_count`` is 0 (then also the artifact's description instead of ``description``).

    Raises:
        TooFewDevicesError: ``device_count < min_devices`` (before anything is published).
    """
    zero = check_matched(device_count, condition, min_devices, what)
    await acreate_table_artifact(rows, key=key, description=zero or description)
    get_run_logger().info("%s: %s", what, counts)
    return zero or message


def completed(result: Any, message: str) -> State[Any]:
    """The flow's final Completed state with ``message`` (shown in the runs list); callers get ``result``."""
    return Completed(message=message, data=result)


def param(parameters: dict[str, Any], name: str, default: Any = None) -> Any:
    """A flow parameter, or a field of its ``request`` (model or dict), for run names."""
    if parameters.get(name) is not None:
        return parameters[name]
    request = parameters.get("request")
    value = getattr(request, name, None) if isinstance(request, BaseModel) else (request or {}).get(name)
    return default if value is None else value


def run_name(build: Callable[[dict[str, Any]], str]) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``build(parameters)``, or the flow's name if that fails."""

    def name() -> str:
        context = FlowRunContext.get()
        parameters = dict(context.parameters or {}) if context else {}
        try:
            return build(parameters)
        except Exception:  # a name must never fail a run
            return context.flow.name if context and context.flow else "iot-flows"

    return name


def apply_overrides(request: M, **overrides: Any) -> M:
    """``request`` with the non-None ``overrides`` set, validated again.

    Raises:
        ValueError: an override is invalid; the message names the field and the reason.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    if not values:
        return request
    try:
        return type(request).model_validate({**request.model_dump(), **values})
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid parameter override ({reasons})") from None
