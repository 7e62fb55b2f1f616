"""The public surface is explicit, sorted, complete for exceptions, and free of Prefect."""

from __future__ import annotations

import subprocess
import sys

import iot_flows
from iot_flows import _exceptions


def test_all_is_sorted_and_importable():
    assert iot_flows.__all__ == sorted(iot_flows.__all__)
    for name in iot_flows.__all__:
        assert hasattr(iot_flows, name), name


def test_every_exception_is_exported():
    classes = {n for n, o in vars(_exceptions).items() if isinstance(o, type) and issubclass(o, _exceptions.IoTFlowsError)}
    assert classes <= set(iot_flows.__all__)


def test_core_does_not_import_prefect():
    code = "import iot_flows, sys; import iot_flows.device, iot_flows.query, iot_flows.hub; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_device_timeouts_are_transport_errors_and_timeout_errors():
    assert "RequestTimeoutError" in iot_flows.__all__
    assert issubclass(iot_flows.RequestTimeoutError, iot_flows.TransportError)
    assert issubclass(iot_flows.RequestTimeoutError, TimeoutError)
    assert str(iot_flows.RequestTimeoutError("no PUBACK within 1 s")) == "no PUBACK within 1 s"


def test_lazy_exports_resolve_to_their_modules():
    from iot_flows.device import DeviceClient
    from iot_flows.hub import Hub

    assert iot_flows.DeviceClient is DeviceClient and iot_flows.Hub is Hub
    assert set(iot_flows._LAZY) <= set(iot_flows.__all__) <= set(dir(iot_flows))
