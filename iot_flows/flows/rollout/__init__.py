"""Staged rollout of any update in waves: the flagship flow (docs/architecture.md §2).

1. resolve targets with a twin query, minus devices already current (``dry_run``: stop
   here and return the plan: targets, skipped, devices per wave, window openings, job
   conditions; nothing changes on the hub);
2. split them into waves by cumulative percentage (e.g. 1 % canary, 10 %, 50 %, 100 %), in
   a stable order (device id), so a re-run picks up exactly where it stopped;
3. per wave: wait for the maintenance window (a deployed run reschedules itself instead of
   holding a worker), start the update as hub jobs (``mechanism``: the ``firmwareUpdate``
   method, the desired-property firmware pattern, or a template), optionally at a rate
   (fixed or an exponential ramp), and follow every device while the jobs run: the job
   records (4xx = rejected) and the twins (success / failure predicates), with timeouts per
   device and per step; the abort criteria (by failure type) are checked every poll round
   and an abort cancels the running jobs at once;
4. retry transient failures (timeouts, ``downloadFailed``, 5xx) with exponential backoff
   and jitter; rejections never;
5. gate on the wave's success ratio, then the health gate (a twin query over the updated
   devices that must hold for ``hold_seconds``), then the optional approval pause;
6. on abort, optionally roll the changed devices back (each target's previous version is
   recorded before it is touched: the result's ``previous`` and ``rollout-<id>-previous``);
7. live per-wave table ``rollout-<id>``, run names ``firmware 2.1.0 · wave 2/4``, events
   ``iot-flows.rollout.wave-completed`` and ``iot-flows.rollout.<verdict>``.

The rules are small objects in :mod:`._policies` (gate, abort, retry, window, rate,
health); the mechanisms in :mod:`._mechanisms`; one wave in :mod:`._wave`.
"""

from iot_flows.flows.rollout._flow import (
    RolloutAbortedError,
    RolloutApproval,
    RolloutInProgressError,
    roll_out_firmware,
    split_waves,
    wave_condition,
)
from iot_flows.flows.rollout._models import (
    AbortCriterion,
    HealthGate,
    RateLimit,
    RolloutPlan,
    RolloutRequest,
    RolloutResult,
    UpdateTemplate,
    WavePlan,
    WaveResult,
    Window,
)
from iot_flows.flows.rollout._policies import (
    AbortPolicy,
    GatePolicy,
    HealthPolicy,
    RatePolicy,
    RetryPolicy,
    WaveTally,
    WindowPolicy,
    policies_for,
)

__all__ = [
    "AbortCriterion",
    "AbortPolicy",
    "GatePolicy",
    "HealthGate",
    "HealthPolicy",
    "RateLimit",
    "RatePolicy",
    "RetryPolicy",
    "RolloutAbortedError",
    "RolloutApproval",
    "RolloutInProgressError",
    "RolloutPlan",
    "RolloutRequest",
    "RolloutResult",
    "UpdateTemplate",
    "WavePlan",
    "WaveResult",
    "WaveTally",
    "Window",
    "WindowPolicy",
    "policies_for",
    "roll_out_firmware",
    "split_waves",
    "wave_condition",
]
