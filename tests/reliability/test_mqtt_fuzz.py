"""MQTT fuzzing, short run: a few thousand generated and mutated streams against a live hub.

The long run (>= 100,000 streams) is ``./scripts/soak --fuzz-streams 100000``; both use
:mod:`tests.reliability.mqtt_fuzz`. The hub must never crash, close only the offending
connection, log no handler error, and the good device keeps answering direct methods.
"""

from __future__ import annotations

import pytest

from tests.reliability.mqtt_fuzz import run_fuzz, setup_devices

SHORT_RUN_STREAMS = 3000
SHORT_RUN_SECONDS = 30.0
SHORT_RUN_MIN_STREAMS = 1000  # run at least this many even on a slow machine


@pytest.fixture(scope="module")
def fuzz_setup(own_hub, own_service):
    good, fuzz = setup_devices(own_service, own_hub)
    yield good, fuzz
    good.disconnect()


def test_hub_survives_fuzzed_streams_and_the_good_device_keeps_answering(own_hub, own_service, fuzz_setup):
    good, fuzz = fuzz_setup
    report = run_fuzz(own_hub, own_service, good, streams_wanted=SHORT_RUN_STREAMS, time_limit=SHORT_RUN_SECONDS,
                      fuzz_devices=fuzz, min_streams=SHORT_RUN_MIN_STREAMS)
    print(report.as_json())
    assert report.findings == []
    assert report.streams >= SHORT_RUN_MIN_STREAMS
    assert {"grammar", "authed", "raw"} <= set(report.kinds)
    assert len(set(report.kinds) - {"grammar", "authed", "raw"}) >= 5  # most session mutations ran
    assert report.method_calls == report.batches
    assert own_hub.hub.mqtt.connection_count == 1  # only the good device is left
