"""The 60-second churn soak (issue 12 item 4): ``./scripts/soak --minutes 10`` in small.

A small fleet reconnects (5 % per minute, scaled up so that a minute sees churn) under
steady direct methods and twin writes against ``hub serve`` in a subprocess. Bounds are
the long run's: hub RSS after warm-up within 10 %, no descriptor growth once the fleet
is back, no error but the ones churn causes; the hub's change feed ring (5,000 here) is
filled before the warm-up.
"""

from __future__ import annotations

import json

from tests.reliability.churn_soak import EXPECTED, SoakConfig, run_soak


def test_sixty_second_soak_keeps_memory_and_descriptors_flat() -> None:
    config = SoakConfig(seconds=60, devices=200, reconnect_percent=20, method_rate=10, twin_rate=10,
                        warmup_seconds=20, sample_seconds=5, change_feed_capacity=5000)
    result = run_soak(config)
    summary = json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1)
    assert result["checks"]["hub_alive"] and result["hub_exit_code"] == 0, summary
    assert result["ops"]["reconnect"] >= 20, summary  # ~40 expected: churn really happened
    assert result["ops"]["method"] >= 100 and result["ops"]["twin_write"] >= 100, summary
    assert result["ops"]["device_report"] >= result["ops"]["twin_write"] // 2, summary
    assert set(result["errors"]) <= EXPECTED, summary
    assert result["change_feed"]["before_warmup"] >= 5000, summary  # the ring was full before warm-up
    assert result["rss_kb"]["growth_after_warmup"] <= 0.10, summary
    assert result["fds"]["end"] <= result["fds"]["start"] + config.fd_slack, summary
    assert result["ok"], summary
