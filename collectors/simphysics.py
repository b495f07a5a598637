"""How a simulated GPU's readings move: workload, power, heat, clocks, memory, counters.

A small physical model, enough that dashboards, alerts and tests see what a real card
does: utilisation follows a workload pattern; power follows utilisation up to the power
limit (then clocks drop and the power-cap reason is set); temperature lags power with a
30 s time constant and, past the slowdown threshold, throttles the clocks; the energy
counter integrates power exactly; processes come and go with jobs.

State advances on a fixed 0.5 s grid from the GPU's creation, with randomness drawn per
tick from a seeded generator, so a given seed, node and GPU give the same readings at the
same relative times, however often they are read.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

TICK_S = 0.5
GPU_IDLE, SW_POWER_CAP, HW_SLOWDOWN = 0x1, 0x4, 0x8
SW_THERMAL, HW_THERMAL, HW_POWER_BRAKE = 0x20, 0x40, 0x80
_MAX_CATCH_UP_TICKS = 7200  # one hour; longer gaps jump ahead without detail


@dataclass(frozen=True, slots=True)
class CardSpec:
    """What the model needs to know about the card it imitates."""

    tdp_w: float
    idle_w: float
    sm_max_mhz: int
    sm_idle_mhz: int
    fb_total_bytes: int
    fb_reserved_bytes: int
    slowdown_c: float
    nvlink: bool

    @classmethod
    def from_recording(cls, device: dict[str, Any]) -> CardSpec:
        """Read the spec from a recorded device (identity and idle answers)."""

        def num(key: str, default: float) -> float:
            value = device.get(key, default)
            return float(value) if isinstance(value, int | float) else default

        memory = device.get("nvmlDeviceGetMemoryInfo(33554472)", {})
        return cls(
            tdp_w=num("nvmlDeviceGetPowerManagementDefaultLimit", 700_000) / 1000,
            idle_w=num("nvmlDeviceGetPowerUsage", 70_000) / 1000,
            sm_max_mhz=int(num("nvmlDeviceGetMaxClockInfo(1)", 1980)),
            sm_idle_mhz=int(num("nvmlDeviceGetClockInfo(1)", 345)),
            fb_total_bytes=int(memory.get("total", 80 << 30)),
            fb_reserved_bytes=int(memory.get("reserved", 0)),
            slowdown_c=num("nvmlDeviceGetTemperatureThreshold(1)", 90),
            nvlink="error" not in str(device.get("field:138@4294967295", "")),
        )


class Workload:
    """A sequence of busy and idle phases; the utilisation a job asks of the GPU."""

    def __init__(self, kind: str, rng: random.Random) -> None:
        self.kind = kind
        self._rng = rng
        self._phases: list[tuple[float, float, bool, float]] = []  # start, end, busy, level
        self._end = 0.0
        if kind != "idle" and rng.random() < 0.75:  # most GPUs of a busy site are working
            self._append(rng.uniform(20, 240), True)
        else:
            self._append(rng.uniform(3, 15), False)

    def _append(self, duration: float, busy: bool) -> None:
        if self.kind == "training":
            level = self._rng.uniform(88, 99)
        elif self.kind == "inference":
            level = self._rng.uniform(25, 70)
        else:
            level = 0.0
        self._phases.append((self._end, self._end + duration, busy and level > 0, level))
        self._end += duration

    def _extend(self, t: float) -> None:
        while self._end <= t:
            busy = not self._phases[-1][2]
            if self.kind == "idle":
                self._append(3600, False)
            elif busy:
                long = self.kind == "training"
                self._append(
                    self._rng.uniform(60, 600) if long else self._rng.uniform(20, 120), True
                )
            else:
                self._append(self._rng.uniform(5, 40), False)
        if len(self._phases) > 64:  # keep what a tick can still look up
            del self._phases[:-8]

    def at(self, t: float, rng: random.Random) -> tuple[float, bool]:
        """Target utilisation (%) and whether a job is running, at ``t`` seconds."""
        self._extend(t)
        for start, end, busy, level in reversed(self._phases):
            if start <= t < end:
                if not busy:
                    return 0.0, False
                if self.kind == "training" and rng.random() < 0.02:  # checkpoint / data stall
                    return level * 0.4, True
                return min(100.0, max(1.0, level + rng.gauss(0, 2.5))), True
        return 0.0, False


@dataclass(slots=True)
class GpuState:
    """Readings of one simulated GPU, in NVML's units where it matters (mW, KiB)."""

    util: float = 0.0
    power_w: float = 0.0
    temp_c: float = 30.0
    mem_temp_c: float = 36.0
    energy_mj: float = 0.0
    sm_mhz: int = 0
    reasons: int = GPU_IDLE
    violation_power_ns: int = 0
    violation_thermal_ns: int = 0
    pcie_tx_bps: float = 0.0
    pcie_rx_bps: float = 0.0
    nvlink_tx_kib: float = 0.0
    nvlink_rx_kib: float = 0.0
    pcie_replays: int = 0
    ecc_sbe: int = 0
    ecc_dbe: int = 0
    remap_correctable: int = 0
    remap_uncorrectable: int = 0
    remap_pending: bool = False
    remap_failure: bool = False
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)


class GpuPhysics:
    """One simulated GPU: call ``advance(t)`` then read ``state``."""

    def __init__(self, spec: CardSpec, workload: str, seed: int, start_energy_mj: float) -> None:
        self.spec = spec
        self._rng = random.Random(seed)
        self.workload = Workload(workload, random.Random(seed + 1))
        self.ambient_c = self._rng.uniform(24, 30)
        self.r_thermal = (68 - 28) / spec.tdp_w  # about 68 °C at full power, normal cooling
        self.power_limit_w = spec.tdp_w
        self.cooling_loss = 0.0  # 0 = healthy, 1 = fans/coolant failing
        self.power_brake = False
        self.state = GpuState(
            power_w=spec.idle_w,
            temp_c=self.ambient_c + 4,
            energy_mj=start_energy_mj,
            sm_mhz=spec.sm_idle_mhz,
        )
        self.t = 0.0
        self._busy = False
        self.jobs_started = 0  # busy phases begun so far: the scheduler numbers jobs by it

    def advance(self, t: float) -> None:
        """Step the model to ``t`` seconds after creation, one tick at a time."""
        ticks = int((t - self.t) / TICK_S)
        if ticks > _MAX_CATCH_UP_TICKS:
            skipped = ticks - _MAX_CATCH_UP_TICKS
            self.state.energy_mj += self.state.power_w * skipped * TICK_S * 1000
            self.t += skipped * TICK_S
            ticks = _MAX_CATCH_UP_TICKS
        for _ in range(max(0, ticks)):
            self.t += TICK_S
            self._step(TICK_S)

    def _step(self, dt: float) -> None:
        s, spec, rng = self.state, self.spec, self._rng
        target, busy = self.workload.at(self.t, rng)
        self._jobs(busy)
        s.util += (target - s.util) * (1 - math.exp(-dt / 2.0))
        if s.util < 0.5 and not busy:
            s.util = 0.0
        slow = spec.slowdown_c
        thermal = 1.0 if s.temp_c < slow - 3 else max(0.45, 1 - (s.temp_c - (slow - 3)) * 0.09)
        clock = min(thermal, 0.35 if self.power_brake else 1.0)
        dynamic = (spec.tdp_w * 0.97 - spec.idle_w) * (s.util / 100) ** 1.15
        demand = spec.idle_w + dynamic * clock**1.5
        reasons = 0
        if demand > self.power_limit_w:
            clock *= (self.power_limit_w / demand) ** (1 / 1.5)
            demand = self.power_limit_w
            reasons |= SW_POWER_CAP
            s.violation_power_ns += int(dt * 1e9)
        s.power_w = min(self.power_limit_w, max(spec.idle_w * 0.9, demand * rng.gauss(1, 0.01)))
        r = self.r_thermal * (1 + 2.5 * self.cooling_loss)
        steady = self.ambient_c + r * s.power_w
        s.temp_c += (steady - s.temp_c) * (1 - math.exp(-dt / 30.0))
        s.mem_temp_c = s.temp_c + 6 + rng.gauss(0, 0.3)
        if s.temp_c >= slow - 3:
            reasons |= SW_THERMAL
            s.violation_thermal_ns += int(dt * 1e9)
        if s.temp_c >= slow:
            reasons |= HW_THERMAL | HW_SLOWDOWN
        if self.power_brake:
            reasons |= HW_POWER_BRAKE | HW_SLOWDOWN
        if s.util < 1:
            reasons |= GPU_IDLE
            s.sm_mhz = spec.sm_idle_mhz
        else:
            s.sm_mhz = max(spec.sm_idle_mhz, int(spec.sm_max_mhz * clock / 15) * 15)
        s.reasons = reasons
        s.energy_mj += s.power_w * dt * 1000
        load = s.util / 100
        s.pcie_tx_bps = load * rng.uniform(0.5e9, 3e9)
        s.pcie_rx_bps = load * rng.uniform(0.8e9, 5e9)
        if spec.nvlink:
            s.nvlink_tx_kib += load * rng.uniform(60e9, 200e9) * dt / 1024
            s.nvlink_rx_kib += load * rng.uniform(60e9, 200e9) * dt / 1024
        if rng.random() < 2e-4 * dt:
            s.pcie_replays += 1
        if rng.random() < 5e-5 * dt:
            s.ecc_sbe += 1

    def _jobs(self, busy: bool) -> None:
        """A job starts with the busy phase (one process, most of the memory) and ends with it."""
        if busy and not self._busy:
            free = self.spec.fb_total_bytes - self.spec.fb_reserved_bytes
            pid = self._rng.randint(2000, 4_000_000)
            self.state.processes = [(pid, int(free * self._rng.uniform(0.45, 0.92)))]
            self.jobs_started += 1
        elif not busy and self._busy:
            self.state.processes = []
        self._busy = busy

    @property
    def busy(self) -> bool:
        """Whether a job runs on the GPU now."""
        return self._busy

    def gpm(self, metric: int) -> float:
        """GPM metrics (percent, or MiB/s for PCIe) consistent with the current load."""
        s = self.state
        training = self.workload.kind in ("training", "mixed")
        values = {
            1: s.util,
            2: s.util * 0.82,
            3: s.util * 0.48,
            5: s.util * (0.46 if training else 0.22),
            10: s.util * 0.57,
            11: s.util * 0.02,
            12: s.util * 0.18,
            13: s.util * 0.09,
            20: s.pcie_tx_bps / (1 << 20),
            21: s.pcie_rx_bps / (1 << 20),
        }
        return min(values.get(metric, 0.0), 100.0) if metric < 20 else values.get(metric, 0.0)
