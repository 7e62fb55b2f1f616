"""Garbage-collector settings for the long-running hub process (``iot-flows hub serve``).

CPython's cyclic collector runs a young-generation pass every 700 net allocations of
container objects. A hub at 10,000 devices allocates a few of them per device operation
(a call's future, its record tuple, the decoded reply) and keeps them for up to one
record flush (0.1 s), so with the default threshold they survive young passes, get
promoted and trigger full collections that walk every connection's objects: ``bench``
measured about 16 us of collector time per device in a ``scheduleDeviceMethod`` job at
10,000 devices (a full pass took ~0.3 s), none with the settings below; a storm of 10,000
devices' reported PATCHes spent ~40 % of the hub's CPU in the collector. Reference
counting still frees almost everything at once; only reference cycles wait for the
collector, which now runs after :data:`YOUNG_THRESHOLD` net allocations (a few MB).
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_for_serving"]

#: Net container allocations between young-generation passes (CPython's default: 700).
YOUNG_THRESHOLD = 50_000


def tune_for_serving() -> None:
    """Raise the young-generation threshold and freeze what start-up allocated.

    Call once in a server process after start-up (not in a library embedding the hub):
    modules, classes and settings loaded so far move to the permanent generation
    (:func:`gc.freeze`), so full collections no longer walk them.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
