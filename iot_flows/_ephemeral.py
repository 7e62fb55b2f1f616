"""Prefect's temporary API server (ephemeral mode), set up the same way by every command.

With no ``PREFECT_API_URL``, Prefect starts a temporary server in a child process for the
first API call. Three things go wrong with its defaults, each seen by a user:

* it posts a heartbeat to prefect.io: an ERROR line ("Failed to send telemetry") offline;
* on a fresh machine it creates and migrates its database, 20-30 s on two cores, past
  Prefect's default start-up timeout of 20 s ("Timed out while attempting to connect");
* Ctrl-C signals the whole foreground process group: the server dies at once while the
  flow engine still wants to record the interrupted run, and every API call then retries
  against a dead server for a minute or more.

:func:`ephemeral_defaults` fixes the first two (before Prefect is imported; a user's own
setting wins); :func:`sigint_blocked_for_children` the third, around the call that starts
the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

__all__ = ["ephemeral_defaults", "sigint_blocked_for_children"]


def ephemeral_defaults() -> None:
    """Set Prefect's ephemeral-server settings unless the environment already has them.

    Call before Prefect is imported (it reads its settings once): analytics off
    (``PREFECT_SERVER_ANALYTICS_ENABLED=false``) and a 180-s start-up timeout
    (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``).
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@contextlib.contextmanager
def sigint_blocked_for_children() -> Iterator[None]:
    """Block SIGINT while Prefect starts its temporary server, which inherits the mask.

    The server then outlives Ctrl-C and Prefect stops it at exit (SIGTERM, which stays
    unblocked). A Ctrl-C pressed meanwhile is delivered when the block is lifted.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
