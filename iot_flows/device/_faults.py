"""Timings and fault rates of simulated devices, and the reproducible dice they roll.

Fault injection is decided by a hash of ``(seed, device id, what, operation number)``
(:func:`chance`): reproducible for a seed without a random-number generator per device.
Download and apply failure rates, a hang rate (accept the update, reply 200, then never
report anything until a reboot), slow responders (a fixed share of devices reply late
and run every step slower), and churn (driven by the fleet: devices drop their
connection and come back).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["BehaviourConfig", "chance", "now_iso"]


@dataclass(frozen=True, slots=True)
class BehaviourConfig:
    """Timings (seconds) and fault rates (0..1) of simulated devices.

    Every field is public API (the fleet CLI derives its options from them). Raises
    ``ValueError`` when a rate is outside [0, 1].
    """

    reboot_seconds: float = 5.0
    factory_reset_seconds: float = 5.0
    fw_wait_seconds: float = 2.0
    fw_download_seconds: float = 4.0
    fw_apply_seconds: float = 4.0
    #: Offline time after applying firmware (0: no reboot).
    fw_reboot_seconds: float = 0.0
    config_apply_seconds: float = 1.0
    #: Random variation of every step: duration * (1 +- jitter).
    jitter: float = 0.2
    factory_firmware_version: str = "1.0.0"
    download_failure_rate: float = 0.0
    apply_failure_rate: float = 0.0
    hang_rate: float = 0.0
    config_failure_rate: float = 0.0
    slow_rate: float = 0.0
    slow_reply_seconds: float = 3.0
    slow_factor: float = 3.0
    churn_rate: float = 0.0
    churn_interval_seconds: float = 30.0
    churn_offline_seconds: float = 5.0
    #: Longest sleep between maintenance-window checks.
    window_recheck_seconds: float = 30.0
    #: Report firmware version etc. on the first connect when the twin lacks it.
    report_initial_state: bool = True

    def __post_init__(self) -> None:
        for name in (
            "download_failure_rate", "apply_failure_rate", "hang_rate", "config_failure_rate",
            "slow_rate", "churn_rate",
        ):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")


def chance(seed: int | str, device_id: str, what: str, n: int = 0) -> float:
    """A reproducible number in [0, 1) for ``(seed, device, what, n)``: a hash, so fault
    injection needs no random-number generator per device."""
    digest = hashlib.blake2b(f"{seed}\x1f{device_id}\x1f{what}\x1f{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds and ``Z`` (as reported by the
    Azure device-management samples)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
