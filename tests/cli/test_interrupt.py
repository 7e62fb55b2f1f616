"""Ctrl-C while ``iot-flows`` is still loading ends it quietly (found by a newcomer)."""

from __future__ import annotations

import signal
import subprocess
import sys


def test_ctrl_c_while_the_command_line_loads_prints_no_traceback() -> None:
    # Loading takes about a second (Prefect, paho, rich); an interrupt then printed a
    # KeyboardInterrupt traceback through the import machinery. `python -v` reports each
    # import on stderr: the interrupt is sent once the command line's own modules load.
    for marker in ("iot_flows/cli/_main", "paho/", "rich/"):
        proc = subprocess.Popen([sys.executable, "-v", "-m", "iot_flows.cli", "device", "list"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stderr is not None
        for line in proc.stderr:
            if marker in line and line.startswith("# code object from"):
                proc.send_signal(signal.SIGINT)
                break
        else:
            raise AssertionError(f"{marker} was never imported")
        rest = proc.stderr.read()
        proc.wait(timeout=30)
        proc.stderr.close()
        assert "Traceback" not in rest, rest[-3000:]
        assert proc.returncode == 130
