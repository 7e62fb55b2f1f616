"""The ``iot-flows`` console script: Ctrl-C while the command line is still loading ends it quietly.

Loading the command line (Prefect, paho, rich) takes about a second; an interrupt in that
time used to print a ``KeyboardInterrupt`` traceback through the import machinery. This
module imports nothing heavy itself, so the interrupt lands inside :func:`main`'s ``try``.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Load and run the command line; exit 130 (the shell's code for SIGINT) if interrupted while loading."""
    try:
        from iot_flows.cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()
