"""The life cycle every real server of the integration tests shares.

A server is a subprocess with its own temporary directory and log, started until it says
it is ready, stopped with SIGTERM (then SIGKILL), and killable on purpose. Subclasses say
how to run it (``command``) and how to tell it is ready (``ready``); each keeps its port
across restarts, so clients reconnect to the same URL.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Generator
from pathlib import Path
from typing import TypeVar

import pytest

S = TypeVar("S", bound="ServerProcess")


class ServerError(RuntimeError):
    """The server did not start or stop as asked; the message has its log tail."""


class ServerProcess:
    """One server subprocess; ``start`` returns once ``ready()`` is true."""

    name = "server"
    start_timeout_s = 30.0

    def __init__(self, workdir: Path, log_name: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / log_name
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that runs the server."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether it answers (polled while starting)."""
        raise NotImplementedError

    def start(self: S) -> S:
        """Start (if not running) and wait until ready."""
        if self.alive():
            return self
        handle = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(
            self.command(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                raise ServerError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.1)
        raise ServerError(f"{self.name} not ready in {self.start_timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not go."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: no goodbye."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stopped_after(servers: list[S]) -> Generator[None, None, None]:
    """For a factory fixture: yield, then stop every server it made, pass or fail."""
    try:
        yield
    finally:
        for server in reversed(servers):
            server.stop()


def stash_servers(request: pytest.FixtureRequest, key: pytest.StashKey[list[S]]) -> list[S]:
    """The list a test's servers are kept in (its failure report shows their logs)."""
    return request.node.stash.setdefault(key, [])
