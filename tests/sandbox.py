"""Run a command inside a unit's seccomp sandbox, without systemd.

Tests cannot start the units (no systemd as PID 1 in CI containers), yet the settings
most likely to break telemetryd at run time are the ones systemd enforces with seccomp:
``SystemCallFilter=`` (with ``SystemCallErrorNumber=``), ``RestrictAddressFamilies=`` and
``MemoryDenyWriteExecute=``. This module reads those lines from the unit file itself and
applies them to a child process before it execs, so what runs is the service's code under
the unit's own rules:

- the syscall sets are expanded by ``systemd-analyze syscall-filter`` (systemd's own group
  tables), the allow-list starting from ``@default`` as systemd's does, ``~`` entries
  removing from it; the filter is loaded with libseccomp (through ctypes), every other
  call failing with the unit's errno;
- address families: ``socket()`` is allowed only for the listed families (systemd answers
  EAFNOSUPPORT for the others, this filter the unit's errno: a simplification);
- MemoryDenyWriteExecute: the kernel's own rule, prctl PR_SET_MDWE (Linux >= 6.3), which
  refuses writable-and-executable mappings as systemd's seccomp filter does. On an older
  kernel the command runs without it and says so on stderr ("MDWE unavailable"); the
  tests that need it skip (``skip_if_no_mdwe``), the rest still get the syscall filter.

What it does not do: namespaces and mounts (ProtectSystem=, PrivateTmp=, ...), the device
cgroup and resource limits; those need systemd itself.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_LAUNCHER = """
import ctypes, json, os, sys
spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE (65) with PR_MDWE_REFUSE_EXEC_GAIN (1)
if spec["mdwe"] and libc.prctl(65, 1, 0, 0, 0) != 0:
    print("MDWE unavailable:", os.strerror(ctypes.get_errno()), file=sys.stderr, flush=True)
if spec["syscalls"] is not None:
    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    allow, fail = 0x7FFF0000, 0x00050000 | spec["errno"]
    ctx = lib.seccomp_init(fail)
    nr_socket = lib.seccomp_syscall_resolve_name(b"socket")
    for name in spec["syscalls"]:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0 or (nr == nr_socket and spec["families"] is not None):
            continue
        assert lib.seccomp_rule_add_array(ctx, allow, nr, 0, None) == 0, name
    if spec["families"] is not None and "socket" in spec["syscalls"]:
        for family in spec["families"]:
            cmp = Cmp(0, 4, family, 0)  # arg0 == family (SCMP_CMP_EQ)
            assert lib.seccomp_rule_add_array(ctx, allow, nr_socket, 1, ctypes.byref(cmp)) == 0
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, as NoNewPrivileges=yes
    assert lib.seccomp_load(ctx) == 0, "seccomp_load failed"
os.execv(sys.argv[2], sys.argv[2:])
"""


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, in order; keys may repeat in units."""
    found: list[tuple[str, str, str]] = []
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def _groups(analyze: str) -> dict[str, list[str]]:
    """systemd's syscall groups: name -> members (syscalls and nested @groups)."""
    listing = subprocess.run(
        [analyze, "syscall-filter"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and line.startswith(" "):
            current.append(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def unit_spec(unit: Path, analyze: str) -> dict[str, Any]:
    """The seccomp-related settings of ``unit``, resolved to syscalls and family numbers."""
    settings = [(key, value) for _s, key, value in unit_settings(unit)]
    groups = _groups(analyze)
    allowed: set[str] | None = None
    for key, value in settings:
        if key != "SystemCallFilter" or not value:
            continue
        deny = value.startswith("~")
        names = _expand(value.removeprefix("~").split(), groups)
        if allowed is None:
            assert not deny, "only allow-list filters are emulated"
            allowed = _expand(["@default"], groups)
        allowed = allowed - names if deny else allowed | names
    families = None
    for key, value in settings:
        if key == "RestrictAddressFamilies" and value:
            families = [int(getattr(socket, name)) for name in value.split()]
    errnos = [value for key, value in settings if key == "SystemCallErrorNumber"]
    number = 1 if not errnos else int(getattr(__import__("errno"), errnos[-1]))
    mdwe = any(k == "MemoryDenyWriteExecute" and v == "yes" for k, v in settings)
    return {
        "syscalls": None if allowed is None else sorted(allowed),
        "families": families,
        "errno": number,
        "mdwe": mdwe,
    }


def sandboxed(spec: dict[str, Any], argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` under ``spec`` (give it to subprocess)."""
    return [sys.executable, "-c", _LAUNCHER, json.dumps(spec), *argv]


def run_sandboxed(
    spec: dict[str, Any], argv: list[str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under ``spec`` to completion."""
    return subprocess.run(
        sandboxed(spec, argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def skip_if_no_mdwe(stderr: str) -> None:
    """Skip a test that needs MDWE when the launcher said the kernel has no PR_SET_MDWE."""
    found = re.search(r"MDWE unavailable: .*", stderr)
    if found:
        pytest.skip(f"kernel without PR_SET_MDWE (Linux >= 6.3): {found.group(0)}")
