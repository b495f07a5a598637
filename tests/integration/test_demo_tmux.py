"""``telemetryd demo`` in a real terminal: top in front of the running system, read off the screen.

The demo runs in a detached tmux session (its own tmux server, so nothing else's sessions
are touched) the size of a large terminal; the test reads the screen with ``capture-pane``
until the fleet (sim-00 .. sim-03) and an alert of the scenario are on it, quits top with
``q`` as an operator would, and checks that the demo exited 0 and the session is gone.
It needs the terminal UI (telemetryd.tui.run_top, textual) and tmux: without tmux it
skips locally and fails in CI (Debian package ``tmux``, installed by scripts/test).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.demo_process import ROOT, demo_env
from tests.integration.mosquitto import require_binary

pytestmark = pytest.mark.integration

NODES = ("sim-00", "sim-01", "sim-02", "sim-03")
ALERTS = ("GpuFellOffBus", "GpuThermalThrottling", "NodeSilent", "GpuLost")


class Tmux:
    """A private tmux server (``-L``) with one session running a command."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.socket = f"telemetryd-demo-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=10, check=check)  # fmt: skip

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "demo", check=False).stdout

    def alive(self) -> bool:
        return self.run("has-session", "-t", "demo", check=False).returncode == 0

    def wait_screen(self, what: str, done: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if done(screen):
                return screen
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; screen:\n{screen}")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux(require_binary("tmux", "/usr/bin/tmux", "install Debian's tmux package"))
    yield t
    t.run("kill-server", check=False)


def test_the_demo_in_a_terminal_shows_the_fleet_and_an_alert_and_quits_on_q(
    tmux: Tmux, tmp_path: Path
) -> None:
    rc_file = tmp_path / "rc"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in demo_env().items()
                   if k in ("PYTHONPATH", "PATH", "HOME", "LANG", "LC_ALL"))  # fmt: skip
    command = (f"cd {shlex.quote(str(ROOT))} && env TERM=xterm-256color {env} "
               f"{shlex.quote(sys.executable)} -m telemetryd demo; "
               f"echo $? > {shlex.quote(str(rc_file))}")  # fmt: skip
    tmux.run("new-session", "-d", "-s", "demo", "-x", "220", "-y", "60", command)

    tmux.wait_screen("the fleet on screen", lambda s: all(n in s for n in NODES), 60)
    # The fleet view counts alerts; the alerts view (3) names them. XID 79 fires at ~+9 s.
    tmux.wait_screen("an alert counted", lambda s: "crit" in s, 60)
    tmux.run("send-keys", "-t", "demo", "3")
    screen = tmux.wait_screen("an alert of the scenario named",
                              lambda s: any(a in s for a in ALERTS), 30)  # fmt: skip
    assert any(n in screen for n in NODES)

    tmux.run("send-keys", "-t", "demo", "q")
    deadline = time.monotonic() + 20
    while (tmux.alive() or not rc_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not tmux.alive(), f"the demo is still running after q:\n{tmux.screen()}"
    assert rc_file.read_text().strip() == "0"
