"""Real NVML on a GPU node, checked against nvidia-smi on the same devices.

Marked ``gpu``: CI (no GPU) deselects it; on a GPU node run ``pytest -m gpu tests/gpu``.
Set TELEMETRYD_RECORD_DIR to keep the recording made here as a fixture for tests/fixtures/nvml.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from collectors.fakenvml import FakeNvml, load_recording
from collectors.nvml import NvmlBackend, import_pynvml
from collectors.nvml_record import RecordingNvml
from telemetryd.config import NvmlConfig

pytestmark = pytest.mark.gpu

SMI_FIELDS = [
    "index", "uuid", "name", "pci.bus_id", "driver_version", "serial", "vbios_version",
    "memory.total", "memory.used", "power.draw", "power.limit", "enforced.power.limit",
    "power.default_limit", "clocks.max.sm", "clocks.max.memory", "clocks.sm", "clocks.mem",
    "temperature.gpu", "pstate", "ecc.mode.current", "mig.mode.current",
    "pcie.link.gen.max", "pcie.link.width.max", "fan.speed", "utilization.gpu",
]  # fmt: skip
NA = {"[N/A]", "N/A", "[Not Supported]", "Not Supported", ""}


def _smi() -> list[dict[str, str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return [dict(zip(SMI_FIELDS, (c.strip() for c in row), strict=True))
            for row in csv.reader(out.strip().splitlines())]  # fmt: skip


@pytest.fixture(scope="module")
def readings():
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi not found: not a GPU node")
    recorder: list[RecordingNvml] = []

    def lib():
        recorder.append(RecordingNvml(import_pynvml()))
        return recorder[0]

    backend = NvmlBackend(lib, NvmlConfig(timeout=10))
    backend.open()
    smi_before = _smi()
    samples = [asyncio.run(backend.sample()) for _ in range(2)]
    smi_after = _smi()
    backend.close()
    return samples, smi_before, smi_after, recorder[0]


def _num(value: str) -> float | None:
    return None if value in NA else float(value)


def test_every_gpu_is_read_without_error(readings):
    samples, smi, _, _ = readings
    gpus = samples[-1].gpus
    assert len(gpus) == len(smi)
    assert [g.error for g in gpus] == [None] * len(gpus)


def test_identity_and_limits_match_nvidia_smi(readings):
    samples, smi, _, _ = readings
    for gpu, row in zip(samples[-1].gpus, smi, strict=True):
        assert gpu.index == int(row["index"])
        assert gpu.uuid == row["uuid"]
        assert gpu.name == row["name"]
        assert gpu.pci_bus_id.lower() == row["pci.bus_id"].lower()
        assert gpu.driver == row["driver_version"]
        assert (gpu.serial or "") == ("" if row["serial"] in NA else row["serial"])
        assert (gpu.vbios or "") == row["vbios_version"]
        total_mib = gpu.fb_total_bytes / 2**20
        reserved_mib = (gpu.fb_reserved_bytes or 0) / 2**20
        assert abs(total_mib - float(row["memory.total"])) <= reserved_mib + 1
        for ours, theirs in [
            (gpu.power_limit_w, "power.limit"),
            (gpu.power_enforced_limit_w, "enforced.power.limit"),
            (gpu.power_default_limit_w, "power.default_limit"),
            (gpu.sm_clock_max_mhz, "clocks.max.sm"),
            (gpu.mem_clock_max_mhz, "clocks.max.memory"),
            (gpu.pcie_gen_max, "pcie.link.gen.max"),
            (gpu.pcie_width_max, "pcie.link.width.max"),
        ]:
            expected = _num(row[theirs])
            assert (ours is None) == (expected is None), theirs
            if expected is not None:
                assert ours == pytest.approx(expected, abs=1), theirs
        fan = _num(row["fan.speed"])
        assert (gpu.fan_pct is None) == (fan is None)  # absent exactly where nvidia-smi says N/A
        if row["ecc.mode.current"] not in NA:
            assert gpu.ecc_enabled == (row["ecc.mode.current"] == "Enabled")
        if row["mig.mode.current"] not in NA:
            assert gpu.mig_mode == (row["mig.mode.current"] == "Enabled")
        assert f"P{gpu.pstate}" == row["pstate"]


def test_moving_values_are_close_to_nvidia_smi(readings):
    samples, before, after, _ = readings
    for gpu, a, b in zip(samples[-1].gpus, before, after, strict=True):
        temps = sorted(float(x["temperature.gpu"]) for x in (a, b))
        assert temps[0] - 3 <= gpu.temp_c <= temps[1] + 3
        powers = sorted(float(x["power.draw"]) for x in (a, b))
        assert powers[0] * 0.8 - 20 <= gpu.power_w <= powers[1] * 1.2 + 20
        used = sorted(float(x["memory.used"]) for x in (a, b))
        assert (
            used[0] - 512
            <= gpu.fb_used_bytes / 2**20
            <= used[1] + 512 + (gpu.fb_reserved_bytes or 0) / 2**20
        )


def test_energy_counter_moves_forward(readings):
    samples, *_ = readings
    for first, second in zip(samples[0].gpus, samples[1].gpus, strict=True):
        if first.energy_mj is not None:
            assert second.energy_mj >= first.energy_mj


def test_recording_replays_the_same_identity(readings, tmp_path):
    samples, *_, recorder = readings
    path = Path(os.environ.get("TELEMETRYD_RECORD_DIR", tmp_path)) / "recorded.json"
    recorder.dump(path)
    replay = NvmlBackend(lambda: FakeNvml(load_recording(path)), NvmlConfig())
    replay.open()
    replayed = asyncio.run(replay.sample())
    replay.close()
    for real, fake in zip(samples[-1].gpus, replayed.gpus, strict=True):
        assert (fake.uuid, fake.name, fake.pci_bus_id) == (real.uuid, real.name, real.pci_bus_id)
        assert fake.fb_total_bytes == real.fb_total_bytes
