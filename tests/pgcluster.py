"""A throw-away PostgreSQL 15 cluster for tests and benchmarks (real server, free port).

``initdb`` refuses to run as root, so as root the cluster is created and run as the
``postgres`` system user (``runuser``); its data and socket directories live in one
temporary directory owned by that user. The server listens on 127.0.0.1 only, with
``fsync`` and ``synchronous_commit`` on, and ``C`` collation (string order = code
point order, as the query language's oracle defines it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PG_BIN", "PgCluster", "PostgresMissing"]

PG_BIN = Path(os.environ.get("IOT_FLOWS_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresMissing(RuntimeError):
    """The PostgreSQL 15 server binaries are not installed."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """``with PgCluster() as pg: pg.url('dbname')``; stopped and deleted on exit."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise PostgresMissing(
                f"PostgreSQL 15 server binaries not found in {PG_BIN}: install them with `apt-get install postgresql-15`"
            )
        self.root = Path(tempfile.mkdtemp(prefix="iot-flows-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        self._started = False

    def _run(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self) -> "PgCluster":
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8")
        self.start_server()
        return self

    def stop_server(self) -> None:
        """Stop the server immediately, keeping its data (``start_server`` brings it back)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._started = False

    def start_server(self) -> None:
        """Start the server again on the same port and data directory."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
            " -c synchronous_commit=on -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        self._started = True

    def url(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``dbname`` (trust auth, user postgres)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        """Create an empty database and return its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", dbname)
        return self.url(dbname)

    def stop(self) -> None:
        if self._started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            finally:
                self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
