"""``telemetryd demo`` as a real process: its output read line by line as it comes.

Shared by the headless demo tests and the terminal one (test_demo_tmux.py): where the
repository is (so the child imports this checkout), and whether an address still listens.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]


def demo_env() -> dict[str, str]:
    """The environment of a demo child: this checkout first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Demo:
    """A running ``telemetryd demo``; its stdout and stderr lines gathered by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "telemetryd", "demo", *args],
            cwd=ROOT, env=demo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, pattern: str, timeout: float) -> str | None:
        """The first line (seen so far or coming) matching ``pattern``; None at timeout or exit."""
        found = next((line for line in self.lines if re.search(pattern, line)), None)
        deadline = time.monotonic() + timeout
        while found is None and time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                found = line
        return found

    def finish(self, timeout: float) -> int:
        """Wait for the exit (reading all output); kill it (and fail later) if it overruns."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return code

    def interrupt(self) -> None:
        """Ctrl-C, as a terminal sends it: SIGINT to the process."""
        self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def text(self) -> str:
        return "\n".join(self.lines)

    def header(self, key: str) -> str:
        """A value of the header (``broker``, ``metrics``, ``state``): its first word."""
        line = self.wait_line(rf"^  {key} ", 30)
        assert line is not None, f"no {key} line in:\n{self.text()}"
        return line.split()[1]


def listening(address: str) -> bool:
    """Whether something accepts connections at ``address`` (a URL, or ``host:port``)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    assert parts.hostname is not None and parts.port is not None, address
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((parts.hostname, parts.port)) == 0


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
