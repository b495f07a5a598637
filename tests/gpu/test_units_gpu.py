"""The agent unit's GPU settings hold on a real GPU node.

Marked ``gpu``: CI (no GPU) deselects it; on a GPU node run ``pytest -m gpu tests/gpu``.

- ``DeviceAllow=char-nvidia* rw`` (systemd/telemetryd-agent.service) allows devices by the
  driver name of their major number in /proc/devices. Every NVIDIA node in /dev must have
  a major whose name matches, or NVML would be refused that node under the unit.
- ``MemoryDenyWriteExecute=yes``, ``SystemCallFilter=``, ``RestrictAddressFamilies=``:
  NVML (libnvidia-ml.so through ctypes, its ioctls) must work under them; checked with
  the unit's own rules emulated by tests/sandbox.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from tests.integration.mosquitto import require_binary
from tests.sandbox import run_sandboxed, unit_spec

pytestmark = pytest.mark.gpu

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "telemetryd-agent.service"


@pytest.fixture(autouse=True)
def _gpu_node() -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi not found: not a GPU node")


def _char_majors() -> dict[int, str]:
    """Character-device majors by driver name, from /proc/devices."""
    majors: dict[int, str] = {}
    section = ""
    for line in Path("/proc/devices").read_text(encoding="ascii").splitlines():
        if line.endswith(":"):
            section = line
        elif line.strip() and section == "Character devices:":
            number, name = line.split(None, 1)
            majors[int(number)] = name.strip()
    return majors


def test_device_allow_patterns_cover_every_nvidia_node() -> None:
    patterns = [
        line.split("=", 1)[1].split()[0].removeprefix("char-")
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith("DeviceAllow=char-")
    ]
    assert patterns
    majors = _char_majors()
    nodes = [*Path("/dev").glob("nvidia*"), *Path("/dev").glob("nvidia-caps/*")]
    nodes = [node for node in nodes if stat.S_ISCHR(node.stat().st_mode)]
    assert any(node.name == "nvidiactl" for node in nodes)
    for node in nodes:
        name = majors.get(os.major(node.stat().st_rdev), "?")
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), (node, name)


def test_nvml_works_under_the_units_seccomp_rules() -> None:
    analyze = require_binary("systemd-analyze", "/usr/bin/systemd-analyze", "install systemd")
    telemetryd = Path(sys.executable).parent / "telemetryd"
    done = run_sandboxed(
        unit_spec(UNIT, analyze),
        [str(telemetryd), "collect", "--once", "--json", "--gpu-backend", "nvml"],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gpus"]
