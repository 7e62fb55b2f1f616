"""A command running in ``bash`` while a test goes on; its output collected by a reader thread."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path


class Running:
    """``bash -c COMMAND`` (``exec``'d when ``script`` is False, so signals reach the command
    itself; a whole script runs in its own process group, stopped together)."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], *, script: bool = False) -> None:
        self.command = command
        self.proc = subprocess.Popen(["bash", "-c", command if script else f"exec {command}"], cwd=cwd, env=env,
                                     text=True, start_new_session=script,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first match of ``pattern`` in the output; fails if the command exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := re.search(pattern, self.output):
                return found
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"{self.command!r} exited {self.proc.returncode}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"{self.command!r}: no {pattern!r} within {timeout} s:\n{self.output}")

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C, as a reader presses it; the exit code (killed after ``timeout`` s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """SIGTERM to the script's whole process group, SIGKILL after 20 s."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
