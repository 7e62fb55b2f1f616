"""The rollout's parameters and results (pydantic: every error names its field)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from iot_flows._window import MaintenanceWindow

__all__ = [
    "AbortCriterion",
    "HealthGate",
    "RateLimit",
    "RolloutPlan",
    "RolloutRequest",
    "RolloutResult",
    "UpdateTemplate",
    "WavePlan",
    "WaveResult",
    "Window",
]

#: Failure types, as AWS IoT Jobs' abort criteria name them.
FailureType = Literal["failed", "rejected", "timed_out"]


class Window(BaseModel):
    """A maintenance window, in the same JSON form devices honour (see ``iot_flows._window``)."""

    start: str = Field(description="HH:MM, local to timezone")
    end: str = Field(description="HH:MM; before start = crosses midnight")
    timezone: str = Field(default="UTC", description="UTC, an IANA name or an offset like +02:00")
    days: list[str] | None = Field(default=None, description="Only on these days, e.g. ['Sat', 'Sun']")

    @model_validator(mode="after")
    def _valid(self) -> Window:
        self.parsed()  # a ValueError here becomes a parameter validation error
        return self

    def parsed(self) -> MaintenanceWindow:
        """The window as a :class:`MaintenanceWindow` (raises ``ValueError`` if invalid)."""
        return MaintenanceWindow.parse(self.model_dump(exclude_none=True))

    def seconds_until_open(self, now: datetime | None = None) -> float:
        """0 when open at ``now`` (default: now, UTC), else seconds until it next opens."""
        return self.parsed().seconds_until_open(now)

    def describe(self) -> str:
        """``22:00-04:00 Europe/Berlin`` (plus the days, when limited)."""
        return f"{self.start}-{self.end} {self.timezone}" + (f" ({', '.join(self.days)})" if self.days else "")


class AbortCriterion(BaseModel):
    """Abort when ``failure_type`` devices pass ``threshold_ratio`` of the finished ones
    (AWS IoT Jobs ``abortConfig.criteriaList``), once ``min_finished`` devices of the wave
    have a final verdict (or the whole wave has one)."""

    failure_type: Literal["failed", "rejected", "timed_out", "all"] = "all"
    threshold_ratio: float = Field(ge=0, le=1, description="Abort above this share of finished devices.")
    min_finished: int = Field(default=10, ge=1, description="Finished devices before the ratio counts.")


class RateLimit(BaseModel):
    """Devices started per minute within a wave (AWS ``jobExecutionsRolloutConfig``).

    A fixed rate (``max_per_minute``) or an exponential ramp: ``base_per_minute``, times
    ``increment_factor`` each time ``successes_per_step`` more devices succeeded, capped
    by ``max_per_minute``.
    """

    max_per_minute: float | None = Field(default=None, gt=0)
    base_per_minute: float | None = Field(default=None, gt=0)
    increment_factor: float = Field(default=2.0, ge=1, le=5)
    successes_per_step: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _some_rate(self) -> RateLimit:
        if self.max_per_minute is None and self.base_per_minute is None:
            raise ValueError("set max_per_minute, base_per_minute (a ramp), or both")
        return self


class HealthGate(BaseModel):
    """After a wave: every updated device must match ``condition`` for ``hold_seconds``."""

    condition: str = Field(min_length=1, description="WHERE body, e.g. properties.reported.health.status = 'ok'.")
    hold_seconds: float = Field(default=60, ge=0, description="How long the condition must hold without a break.")
    timeout_seconds: float = Field(default=900, gt=0, description="Abort when it has not held by then.")


class UpdateTemplate(BaseModel):
    """A generic update: an action plus success and failure predicates on reported properties.

    ``method`` + ``payload`` (a direct-method job) or ``desired`` (a twin-update job).
    ``success`` maps reported paths to the values that mean done (all must match);
    ``failure`` maps reported paths to the values that mean failed (any may match).
    """

    method: str | None = None
    payload: Any = None
    desired: dict[str, Any] | None = None
    success: dict[str, Any] = Field(min_length=1)
    failure: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_action(self) -> UpdateTemplate:
        if (self.method is None) == (self.desired is None):
            raise ValueError("set exactly one action: method (with payload) or desired")
        return self


class RolloutRequest(BaseModel):
    """What to roll out, to whom, and the rules between waves."""

    package_uri: str = Field(description="https URI of the image.")
    version: str = Field(description="Version the image installs.")
    target_condition: str = Field(default="*", description="WHERE body selecting the fleet.")
    waves: list[float] = Field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0], description="Cumulative percentages.")
    min_success_ratio: float = Field(default=0.95, ge=0, le=1, description="Gate: share of a wave that must succeed.")
    abort_failure_ratio: float = Field(default=0.2, ge=0, le=1, description="Abort when a wave's failures pass this.")
    device_timeout_seconds: float = Field(default=900, gt=0, description="Per attempt, until applyComplete.")
    retries: int = Field(default=1, ge=0, le=10, description="Extra attempts for transient failures.")
    retry_backoff_seconds: float = Field(default=30, ge=0, description="First retry delay; doubles, +/-50 % jitter.")
    maintenance_window: Window | None = Field(default=None, description="Start waves only inside this window.")
    approval_after_canary: bool = Field(default=False, description="Pause for approval after the first wave.")
    approval_timeout_seconds: int = Field(default=86400, gt=0)
    poll_interval_seconds: float = Field(default=2.0, gt=0)
    hold_worker_max_seconds: float = Field(
        default=300, ge=0, description="Wait for the window in-process at most this long; longer waits reschedule the run."
    )
    # -- rollout v2 ---------------------------------------------------------------------
    rollout_id: str | None = Field(default=None, description="Names artifacts and events; default: the version.")
    dry_run: bool = Field(default=False, description="Plan only: return and publish the plan, change nothing.")
    mechanism: Literal["method", "desired", "template"] = Field(
        default="method", description="firmwareUpdate method, desired firmware property (Azure tutorial), or template."
    )
    template: UpdateTemplate | None = Field(default=None, description="The action and predicates (mechanism=template).")
    abort: list[AbortCriterion] = Field(default_factory=list, description="Abort criteria by failure type.")
    abort_min_finished: int = Field(default=10, ge=1, description="min_finished of abort_failure_ratio's criterion.")
    retry_max_backoff_seconds: float = Field(default=600, ge=0)
    step_timeout_seconds: float | None = Field(default=None, gt=0, description="Timed out after no progress this long.")
    rate: RateLimit | None = Field(default=None, description="Devices started per minute within a wave.")
    health: HealthGate | None = Field(default=None, description="Bake time: a twin query that must hold after a wave.")
    rollback_on_abort: bool = Field(default=False, description="On abort, put the updated devices back.")
    rollback_package_uri: str | None = Field(
        default=None, description="Previous image URI with {version}, e.g. https://fw.example.com/fw-{version}.bin."
    )
    wait_for_offline_devices: bool = Field(default=False, description="Offline devices get the update on connect.")

    @field_validator("waves")
    @classmethod
    def _increasing(cls, waves: list[float]) -> list[float]:
        if not waves or any(not 0 < w <= 100 for w in waves) or waves != sorted(waves) or waves[-1] != 100:
            raise ValueError("waves must be increasing cumulative percentages ending at 100")
        return waves

    @model_validator(mode="after")
    def _consistent(self) -> RolloutRequest:
        if self.mechanism == "template" and self.template is None:
            raise ValueError("template: required when mechanism is 'template'")
        if self.rollback_package_uri is not None and "{version}" not in self.rollback_package_uri:
            raise ValueError("rollback_package_uri: must contain {version}")
        return self

    @property
    def key(self) -> str:
        """The rollout id (the version when none is given)."""
        return self.rollout_id or self.version


class WaveResult(BaseModel):
    """Outcome of one wave (or rollback): device counts, failed/rejected/timed-out ids, timing."""
    index: int
    devices: int
    kind: str = Field(default="wave", description="wave | rollback")
    updated: int = 0
    failed: list[str] = Field(default_factory=list)
    rejected: list[str] = Field(default_factory=list)
    timed_out: list[str] = Field(default_factory=list)
    offline_at_start: int = 0
    attempts: int = 0
    retried: int = 0
    success_ratio: float = 0.0
    seconds: float = 0.0
    task_runs: int = 0


class WavePlan(BaseModel):
    """One planned wave of a dry run: its devices, id range, job condition and window opening."""
    wave: int
    devices: int
    to_update: int
    first: str | None = None
    last: str | None = None
    job_condition: str | None = None
    opens: str | None = Field(default=None, description="When the maintenance window lets it start (UTC ISO).")


class RolloutPlan(BaseModel):
    """A dry-run plan: targets, devices skipped as current, and the waves."""
    rollout_id: str
    version: str
    mechanism: str
    targets: int
    already_current: int
    skipped: list[str] = Field(default_factory=list, description="Already on the version (first 1,000).")
    waves: list[WavePlan] = Field(default_factory=list)


class RolloutResult(BaseModel):
    """Result of a rollout flow: status (completed, aborted, planned), per-wave results and the abort reason."""
    version: str
    status: str = Field(description="completed | aborted | planned")
    targets: int = 0
    already_current: int = 0
    waves: list[WaveResult] = Field(default_factory=list)
    reason: str | None = None
    rollout_id: str | None = None
    plan: RolloutPlan | None = None
    previous: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per updated device: the version and package before the rollout."
    )
    rollback: WaveResult | None = None
