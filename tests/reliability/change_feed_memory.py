"""Bytes per entry of the hub's change feed ring (issue 12 item 4: soak memory).

``python -m tests.reliability.change_feed_memory`` fills a :class:`ChangeFeed` with
``--entries`` changes shaped like the soak's (reported and desired twin patches,
connection changes) and prints, as JSON, the Python heap it holds per entry
(``tracemalloc``), measured after the ring is full so that only what a full ring keeps
counts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tracemalloc
from types import SimpleNamespace
from typing import Any

from iot_flows.hub._changes import ChangeFeed

__all__ = ["bytes_per_entry"]


def _fill(feed: ChangeFeed, n: int, rng: random.Random) -> None:
    for i in range(n):
        device = f"soak-{rng.randrange(10_000):05d}"
        record: Any = SimpleNamespace(reported_version=i, desired_version=i)
        r = i % 4
        if r == 0:
            feed.on_twin_change(device, "desired", {"soak": rng.random()}, record)
        elif r == 1:
            feed.on_twin_change(device, "reported", {"soak": rng.random(), "seenVersion": i}, record)
        else:
            feed.on_connection_change(device, r == 2)


def bytes_per_entry(entries: int = 50_000, capacity: int | None = None) -> dict[str, Any]:
    """Heap bytes a full ring of ``entries`` soak-shaped changes holds, per entry."""
    rng = random.Random(4)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed = ChangeFeed(capacity or entries)
        _fill(feed, entries, rng)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {"entries": entries, "bytes_held": held, "bytes_per_entry": round(held / entries, 1),
            "read_back": len(feed.read(0, entries)[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="change_feed_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=50_000)
    args = parser.parse_args(argv)
    print(json.dumps(bytes_per_entry(args.entries)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
