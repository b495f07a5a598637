"""The host side of GPU processes (collectors/host.py ProcessInspector) on the live /proc."""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from collectors.host import ProcessInspector

SLEEPER = "import time; time.sleep(60)"


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, "--token=hunter2"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_own_process() -> None:
    inspector = ProcessInspector()
    first = inspector.inspect([os.getpid()])[os.getpid()]
    assert first.user == pwd.getpwuid(os.getuid()).pw_name
    assert first.command is not None and "python" in first.command.split()[0]
    assert first.rss_bytes is not None and first.rss_bytes > 10 << 20
    assert first.cpu_pct is None  # no previous reading yet
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    second = inspector.inspect([os.getpid()])[os.getpid()]
    assert second.cpu_pct is not None and 10.0 < second.cpu_pct <= 100.0 * (os.cpu_count() or 1)


def test_command_modes(child: subprocess.Popen[bytes]) -> None:
    full = ProcessInspector("full").inspect([child.pid])[child.pid].command
    assert full is not None and full.endswith(f"-c {SLEEPER} --token=hunter2")
    name = ProcessInspector("name").inspect([child.pid])[child.pid].command
    assert name is not None and name.startswith("python") and "hunter2" not in name
    off = ProcessInspector("off").inspect([child.pid])[child.pid]
    assert off.command is None and off.rss_bytes is not None
    cut = ProcessInspector("full", command_max=10).inspect([child.pid])[child.pid].command
    assert cut is not None and len(cut) == 10 and cut.endswith("…")
    assert full.startswith(cut[:-1])


def test_vanished_pid_is_quiet_and_forgotten(
    child: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    inspector = ProcessInspector()
    assert child.pid in inspector.inspect([child.pid, os.getpid()])
    child.kill()
    child.wait()
    with caplog.at_level(logging.DEBUG):
        found = inspector.inspect([child.pid, os.getpid()])
    assert child.pid not in found and os.getpid() in found
    assert not [r for r in caplog.records if r.name.startswith("collectors")]
    inspector.inspect([os.getpid()])
    assert set(inspector._tracked) == {os.getpid()}


def test_pids_not_asked_again_are_forgotten(child: subprocess.Popen[bytes]) -> None:
    inspector = ProcessInspector()
    inspector.inspect([child.pid, os.getpid()])
    inspector.inspect([os.getpid()])
    assert set(inspector._tracked) == {os.getpid()}
    # asked again later: a fresh reading, so no CPU % against a stale baseline
    assert inspector.inspect([child.pid])[child.pid].cpu_pct is None


def test_pid_that_never_existed() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert ProcessInspector().inspect([pid_max + 1]) == {}


def test_a_proc_root_that_is_not_a_procfs_is_refused_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = psutil.PROCFS_PATH
    with caplog.at_level(logging.WARNING):
        inspector = ProcessInspector(procfs=str(tmp_path))
        assert inspector.inspect([os.getpid()]) == {}
        assert inspector.inspect([os.getpid()]) == {}
    assert before == psutil.PROCFS_PATH
    assert [r.getMessage() for r in caplog.records] == [
        f"attribution proc_root {tmp_path} is not a procfs (no stat file); the user, command,"
        " CPU and RSS of GPU processes are not read"
    ]


def test_the_hosts_procfs_mounted_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(psutil, "PROCFS_PATH", "/proc")
    host_proc = tmp_path / "host-proc"  # as a container's /host/proc
    host_proc.symlink_to("/proc")
    inspector = ProcessInspector(procfs=str(host_proc))
    assert str(host_proc) == psutil.PROCFS_PATH
    assert inspector.inspect([os.getpid()])[os.getpid()].rss_bytes
