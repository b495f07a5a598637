"""Run a command the way ``MemoryDenyWriteExecute=yes`` would, without systemd.

The units set MemoryDenyWriteExecute=yes, which systemd enforces with a seccomp filter
refusing writable-and-executable mappings. Tests cannot start a unit (no systemd as PID 1
in CI containers), but Linux >= 6.3 has the same rule as a process flag: prctl
PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN, inherited across fork and execve. A library
that needs W+X memory (an executable stack, JIT code, libffi closures without static
trampolines) fails under it as it would under the unit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

_LAUNCHER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(f"MDWE unavailable: {{os.strerror(ctypes.get_errno())}}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def run_without_wx(
    argv: list[str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with W+X memory refused; skip when the kernel lacks PR_SET_MDWE."""
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if "MDWE unavailable" in done.stderr:
        pytest.skip(f"kernel without PR_SET_MDWE (Linux >= 6.3): {done.stderr.strip()}")
    return done
