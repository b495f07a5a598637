"""The simulated node: N GPUs shaped like a recorded card, animated by physics and faults.

The simulator is a FakeNvml whose moving answers come from simphysics, so everything
above NVML (the reader, timeouts, events, the agent, the aggregator, alerts) runs as it
would on a GPU node. Identity comes from the recorded card, made unique per node and GPU
(UUIDs are derived from the node name, so a simulated fleet has no duplicate GPUs).
Scenario faults act where real ones do: an XID arrives through the event set, a lost GPU
makes every call fail with GPU_IS_LOST, a hang blocks an NVML call. With
``[agent.sim] jobs`` the simulator also writes its jobs to the job mapping directory
(collectors/simjobs.py), as a Slurm prolog and epilog would.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from collectors.cards import card_path
from collectors.fakenvml import PROCESS_UTILIZATION, FakeHandle, FakeNvml, load_recording
from collectors.nvml import NvmlBackend
from collectors.scenario import Fault, load_scenario
from collectors.simjobs import SIM_JOBS_NEED_DIR, SimScheduler
from collectors.simphysics import TICK_S, CardSpec, GpuPhysics
from telemetryd.config import AgentConfig
from telemetryd.errors import SourceUnavailable
from telemetryd.names import default_node

WARMUP_S = 600.0  # physics runs this long before the agent starts: no cold fleet at t=0
_NAMESPACE = uuid.UUID("6f1d2c57-0b5e-4a8e-9f3a-2d7c4b1e8a90")
_BUSES = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB]  # an HGX H100 board's layout
_MIXED = [
    "training",
    "training",
    "inference",
    "training",
    "idle",
    "training",
    "inference",
    "training",
]
UINT_MAX = 0xFFFFFFFF
XID, DBE, REMAP, REMAP_FAILURE = 0x8, 0x2, 0x400, 0x800
PROCESS_PERIOD_US = 166_667  # recent drivers sample process utilisation at ~6 Hz
PROCESS_RING_US = 20_000_000  # and keep about this much of it


def _personalise(base: dict[str, Any], node: str, index: int) -> dict[str, Any]:
    device = copy.deepcopy(base)
    gpu_uuid = uuid.uuid5(_NAMESPACE, f"{node}/{index}")
    device["nvmlDeviceGetUUID"] = f"GPU-{gpu_uuid}"
    device["nvmlDeviceGetSerial"] = str(1650000000000 + zlib.crc32(f"{node}/{index}".encode()))
    bus = _BUSES[index] if index < len(_BUSES) else 0xE0 + index
    device["nvmlDeviceGetPciInfo"] = dict(device.get("nvmlDeviceGetPciInfo", {}))
    device["nvmlDeviceGetPciInfo"]["busId"] = f"00000000:{bus:02X}:00.0"
    device["nvmlDeviceGetPciInfo"]["bus"] = bus
    return device


class SimNvml(FakeNvml):
    """A FakeNvml whose readings move; see the module docstring."""

    def __init__(
        self,
        card: dict[str, Any],
        *,
        gpus: int,
        node: str,
        seed: int = 0,
        workload: str = "mixed",
        faults: list[Fault] | None = None,
        clock: Callable[[], float] = time.monotonic,
        scheduler: SimScheduler | None = None,
    ) -> None:
        base = card["devices"][0]
        super().__init__({**card, "devices": [_personalise(base, node, i) for i in range(gpus)]})
        spec = CardSpec.from_recording(base)
        node_seed = zlib.crc32(f"{seed}/{node}".encode())
        self.physics = [
            GpuPhysics(
                spec,
                _MIXED[i % len(_MIXED)] if workload == "mixed" else workload,
                seed=node_seed + 1000 * i,
                start_energy_mj=float(zlib.crc32(f"{node}/{i}/energy".encode()) % 10**11),
            )
            for i in range(gpus)
        ]
        self.faults = [f for f in (faults or []) if f.node in (None, node)]
        for fault in self.faults:
            if fault.gpu >= gpus:
                raise ValueError(f"scenario fault on GPU {fault.gpu}, but the node has {gpus}")
        self._started: set[int] = set()
        self._ended: set[int] = set()
        self._clock = clock
        self.scheduler = scheduler
        self._t0 = clock()
        self._updated = -1.0
        self._lock = threading.Lock()

    # -- time and faults -------------------------------------------------------------------
    def update(self) -> None:
        """Bring physics and scenario up to now (at most once per half tick)."""
        t = self._clock() - self._t0
        with self._lock:
            if t - self._updated < TICK_S / 2:
                return
            self._updated = t
            for i, fault in enumerate(self.faults):
                if i not in self._started and t >= fault.at:
                    self._started.add(i)
                    self._start(fault)
                end = fault.at + fault.duration if fault.duration is not None else None
                if i in self._started and i not in self._ended and end is not None and t >= end:
                    self._ended.add(i)
                    self._end(fault)
            for physics in self.physics:
                physics.advance(WARMUP_S + t)
            if self.scheduler is not None:
                self.scheduler.sync(self.physics)

    def _start(self, fault: Fault) -> None:
        p, dev = self.physics[fault.gpu], fault.gpu
        if fault.kind == "thermal":
            p.cooling_loss = 1.0
        elif fault.kind == "power_brake":
            p.power_brake = True
        elif fault.kind == "power_cap" and fault.limit_w is not None:
            p.power_limit_w = min(p.spec.tdp_w, fault.limit_w)
        elif fault.kind == "xid" and fault.code is not None:
            self.inject_event(dev, XID, fault.code)
            if fault.code == 79:
                self.lose(dev)
        elif fault.kind == "gpu_lost":
            self.lose(dev)
        elif fault.kind == "ecc_dbe":
            p.state.ecc_dbe += 1
            p.state.remap_uncorrectable += 1
            p.state.remap_pending = True
            self.inject_event(dev, DBE)
            self.inject_event(dev, XID, 48)
            self.inject_event(dev, REMAP)
        elif fault.kind == "remap_failure":
            p.state.remap_failure = True
            self.inject_event(dev, REMAP_FAILURE)
            self.inject_event(dev, XID, 64)
        elif fault.kind == "hang":
            self.hang(dev, fault.call, fault.duration if fault.duration is not None else 3600)

    def _end(self, fault: Fault) -> None:
        p, dev = self.physics[fault.gpu], fault.gpu
        if fault.kind == "thermal":
            p.cooling_loss = 0.0
        elif fault.kind == "power_brake":
            p.power_brake = False
        elif fault.kind == "power_cap":
            p.power_limit_w = p.spec.tdp_w
        elif fault.kind in ("xid", "gpu_lost"):
            self.lose(dev, False)
        elif fault.kind == "remap_failure":
            p.state.remap_failure = False

    def _faults(self, fn: str, handle: FakeHandle) -> None:
        self.update()
        super()._faults(fn, handle)

    # -- moving answers --------------------------------------------------------------------
    def answer(self, dev: int, mig: int | None, key: str) -> Any:
        """Physics for what moves; the recorded card for identity and what does not."""
        if mig is None:
            value = self._dynamic(self.physics[dev], key, dev)
            if value is not None:
                return value
        return super().answer(dev, mig, key)

    def _dynamic(self, p: GpuPhysics, key: str, dev: int) -> Any:
        s = p.state
        limit_mw = int(p.power_limit_w * 1000)
        if key in ("nvmlDeviceGetClockInfo(0)", "nvmlDeviceGetClockInfo(1)"):
            return s.sm_mhz
        if key == "nvmlDeviceGetTemperature(0)":
            return round(s.temp_c)
        if key == "nvmlDeviceGetPowerUsage":
            return int(s.power_w * 1000)
        if key in ("nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetEnforcedPowerLimit"):
            return limit_mw
        if key == "nvmlDeviceGetUtilizationRates":
            return {"gpu": round(s.util), "memory": round(s.util * 0.55)}
        if key.startswith("nvmlDeviceGetMemoryInfo"):
            total, reserved = p.spec.fb_total_bytes, p.spec.fb_reserved_bytes
            used = sum(b for _, b in s.processes)
            if key == "nvmlDeviceGetMemoryInfo":
                return {"total": total, "free": total - reserved - used, "used": used + reserved}
            return {
                "version": 33554472,
                "total": total,
                "reserved": reserved,
                "free": total - reserved - used,
                "used": used,
            }
        if key == "nvmlDeviceGetCurrentClocksEventReasons":
            return s.reasons
        if key.startswith("nvmlDeviceGetViolationStatus("):
            ns = s.violation_power_ns if key.endswith("(0)") else s.violation_thermal_ns
            return {"referenceTime": int(time.time() * 1e6), "violationTime": ns}
        if key == "nvmlDeviceGetComputeRunningProcesses":
            return [
                {
                    "pid": pid,
                    "usedGpuMemory": used,
                    "gpuInstanceId": UINT_MAX,
                    "computeInstanceId": UINT_MAX,
                }
                for pid, used in s.processes
            ]
        if key.startswith("nvmlDeviceGetPcieThroughput("):
            return int((s.pcie_tx_bps if key.endswith("(0)") else s.pcie_rx_bps) / 1024)
        return self._field(p, key, dev)

    def _field(self, p: GpuPhysics, key: str, dev: int) -> Any:
        s = p.state
        counters: dict[str, tuple[int, float | int | bool]] = {
            "field:82": (1, round(s.mem_temp_c)),
            "field:83": (3, int(s.energy_mj)),
            "field:94": (1, s.pcie_replays),
            "field:142": (1, s.remap_correctable),
            "field:143": (1, s.remap_uncorrectable),
            "field:144": (1, int(s.remap_pending)),
            "field:145": (1, int(s.remap_failure)),
            "field:3": (3, s.ecc_sbe),
            "field:4": (3, s.ecc_dbe),
            "field:5": (3, s.ecc_sbe),
            "field:6": (3, s.ecc_dbe),
        }
        if p.spec.nvlink:
            counters["field:138@4294967295"] = (3, int(s.nvlink_tx_kib))
            counters["field:139@4294967295"] = (3, int(s.nvlink_rx_kib))
        if key in counters:
            recorded = self.devices[dev].get(key)
            if isinstance(recorded, dict) and "error" in recorded:
                return None  # the card does not support it: stay faithful to the recording
            value_type, value = counters[key]
            return {"type": value_type, "value": value}
        return None

    def process_samples(self, dev: int, mig: int | None, since_us: int) -> list[dict[str, int]]:
        """Process utilisation as a driver keeps it: a sample per pid every 1/6 s in a ring.

        SM % follows the physics' load with a little per-sample spread, memory % the same
        share of it as the GPU's own memory utilisation; no encoder or decoder work. A card
        whose recording marks the call as an error keeps that error.
        """
        recorded = self.devices[dev].get(PROCESS_UTILIZATION)
        s = self.physics[dev].state
        if mig is not None or isinstance(recorded, dict) or not s.processes:
            return super().process_samples(dev, mig, since_us) if recorded else []
        now = time.time_ns() // 1000
        first = max(since_us, now - PROCESS_RING_US) // PROCESS_PERIOD_US + 1
        out: list[dict[str, int]] = []
        for pid, _ in s.processes:
            for step in range(first, now // PROCESS_PERIOD_US + 1):
                spread = 0.9 + (zlib.crc32(f"{pid}/{step}".encode()) % 101) / 1000
                out.append({"pid": pid, "timeStamp": step * PROCESS_PERIOD_US,
                            "smUtil": round(s.util * spread),
                            "memUtil": round(s.util * 0.55 * spread),
                            "encUtil": 0, "decUtil": 0})  # fmt: skip
        return out

    def gpm_value(self, dev: int, metric: int) -> float:
        """GPM metrics from the physics, for cards that support GPM."""
        super().gpm_value(dev, metric)  # unsupported metrics raise as recorded
        return self.physics[dev].gpm(metric)


def create(cfg: AgentConfig) -> NvmlBackend:
    """Factory for ``gpu_backend = "sim"``."""
    node = cfg.node or default_node()

    def build() -> SimNvml:
        try:
            card = load_recording(card_path(cfg.sim.card))
            faults = load_scenario(cfg.sim.scenario).fault if cfg.sim.scenario else []
            return SimNvml(
                card,
                gpus=cfg.sim.gpus,
                node=node,
                seed=cfg.sim.seed,
                workload=cfg.sim.workload,
                faults=faults,
                scheduler=_scheduler(cfg, node),
            )
        except ValueError as exc:
            raise SourceUnavailable(f"simulator: {exc}") from None

    return NvmlBackend(build, cfg.nvml, name="sim")


def _scheduler(cfg: AgentConfig, node: str) -> SimScheduler | None:
    """The job-map writer ``[agent.sim] jobs`` asks for; SourceUnavailable saying why not."""
    if not cfg.sim.jobs:
        return None
    if not cfg.attribution.job_map_dir:
        raise SourceUnavailable(f"simulator: [agent.sim] jobs {SIM_JOBS_NEED_DIR}")
    scheduler = SimScheduler(cfg.attribution.job_map_dir, node, cfg.sim.gpus)
    try:
        scheduler.open()
    except OSError as exc:
        raise SourceUnavailable(
            f"simulator: job_map_dir {cfg.attribution.job_map_dir}: {exc.strerror or exc}"
        ) from None
    return scheduler
