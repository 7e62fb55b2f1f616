"""``iot-flows demo``: the same command as ``./scripts/demo`` (:mod:`iot_flows.demo`)."""

from iot_flows.demo._cli import demo

__all__ = ["demo"]
