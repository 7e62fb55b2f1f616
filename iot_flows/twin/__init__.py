"""Twin documents: merge-patch semantics, ``$metadata`` and IoT Hub's limits."""

from iot_flows.twin._document import (
    MAX_DEPTH,
    SECTION_LIMITS,
    TwinTooLargeError,
    apply_patch,
    removed_keys_as_nulls,
    replace_section,
    section_size,
    utc_now,
    validate_patch,
    validate_section_size,
)

__all__ = [
    "MAX_DEPTH",
    "SECTION_LIMITS",
    "TwinTooLargeError",
    "apply_patch",
    "removed_keys_as_nulls",
    "replace_section",
    "section_size",
    "utc_now",
    "validate_patch",
    "validate_section_size",
]
