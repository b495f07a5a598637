"""Read one GPU through an NVML-shaped library into the wire model.

``lib`` is anything with pynvml's functions: pynvml itself, the replaying FakeNvml, the
simulator, or the recorder wrapped around pynvml. Nothing here imports pynvml; the NVML
constants we need are ABI values from nvml.h, fixed across driver releases.

Error policy, per call: "not supported" and kin make the field *absent* (never 0); a
mismatch between bindings and driver is logged once with a hint; the errors that mean the
device itself is gone or broken (GPU lost, reset required, unknown, driver) abort the
read and the GPU is reported with its error while the node's other GPUs carry on.
Identity and limits are read once at start; each sample reads only what moves, most
counters in one ``nvmlDeviceGetFieldValues`` call, as DCGM does.
"""

from __future__ import annotations

import logging
from typing import Any

from collectors.nvml_procs import ProcessReader
from telemetryd.clock_events import reason_name
from telemetryd.model import Gpu, GpuError, MigDevice

log = logging.getLogger(__name__)

# nvml.h return codes
NOT_SUPPORTED, NO_PERMISSION, NOT_FOUND, FUNCTION_NOT_FOUND = 3, 4, 6, 13
FATAL = {
    1: ("driver", "NVML is not initialised"),
    9: ("driver", "the NVIDIA driver is not loaded"),
    15: ("gpu_lost", "GPU is lost (fell off the bus); treat as XID 79"),
    16: ("reset_required", "GPU requires a reset"),
    18: ("driver", "NVML and kernel driver versions differ (driver upgraded without reload?)"),
    28: ("gpu_lost", "GPU not found"),
    999: ("unknown", "unknown NVML error"),
}
UINT_MAX = 0xFFFFFFFF
MEMORY_V2 = 0x02000028
CLOCK_GRAPHICS, CLOCK_SM, CLOCK_MEM, CLOCK_VIDEO = 0, 1, 2, 3
TEMP_GPU = 0
PCIE_TX, PCIE_RX = 0, 1
POLICY_POWER, POLICY_THERMAL = 0, 1
RETIRED_SBE, RETIRED_DBE = 0, 1
GPM_METRICS_GET_VERSION = 1

ARCHS = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
    13: "rubin",
}
RECOVERY_ACTIONS = {
    0: "none",
    1: "gpu_reset",
    2: "node_reboot",
    3: "drain_p2p",
    4: "drain_and_reset",
    5: "recover_imex_domain",
    6: "bus_reset",
    7: "system_reboot",
}

# (field id, scope id, Gpu attribute, scale); scale None means bool
FIELDS: list[tuple[int, int, str, float | None]] = [
    (1, 0, "ecc_enabled", None),
    (3, 0, "ecc_sbe_volatile", 1),
    (4, 0, "ecc_dbe_volatile", 1),
    (5, 0, "ecc_sbe_aggregate", 1),
    (6, 0, "ecc_dbe_aggregate", 1),
    (38, 0, "nvlink_crc_flit_errors", 1),
    (45, 0, "nvlink_crc_data_errors", 1),
    (52, 0, "nvlink_replay_errors", 1),
    (59, 0, "nvlink_recovery_errors", 1),
    (82, 0, "mem_temp_c", 1),
    (83, 0, "energy_mj", 1),
    (94, 0, "pcie_replay_total", 1),
    (138, UINT_MAX, "nvlink_tx_bytes", 1024),  # KiB, all links
    (139, UINT_MAX, "nvlink_rx_bytes", 1024),
    (142, 0, "remap_correctable_rows", 1),
    (143, 0, "remap_uncorrectable_rows", 1),
    (144, 0, "remap_pending", None),
    (145, 0, "remap_failure", None),
]
FIELD_RECOVERY_ACTION = 230
_VALUE_ATTR = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}

# GPM metric id -> (Gpu attribute, scale); percentages unless scaled to bytes/s
GPM_METRICS: dict[int, tuple[str, float]] = {
    1: ("gr_engine_active_pct", 1),
    2: ("sm_active_pct", 1),
    3: ("sm_occupancy_pct", 1),
    5: ("tensor_active_pct", 1),
    10: ("dram_active_pct", 1),
    11: ("fp64_active_pct", 1),
    12: ("fp32_active_pct", 1),
    13: ("fp16_active_pct", 1),
    20: ("pcie_tx_bytes_per_s", 1 << 20),  # MiB/s
    21: ("pcie_rx_bytes_per_s", 1 << 20),
}


class DeviceFatal(Exception):
    """The device cannot be read at all this interval."""

    def __init__(self, call: str, code: int) -> None:
        kind, meaning = FATAL[code]
        self.error = GpuError(code=kind, message=f"{call}: {meaning}")  # type: ignore[arg-type]
        super().__init__(self.error.message)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _pct(value: float) -> float:
    return min(100.0, max(0.0, float(value)))


class DeviceReader:
    """Reads one GPU; keeps its handle, static identity and GPM samples for the process life."""

    def __init__(
        self,
        lib: Any,
        handle: Any,
        index: int,
        *,
        processes: bool = True,
        pcie_throughput: str = "auto",
        driver: str = "",
        cuda_driver: str | None = None,
    ) -> None:
        self.lib = lib
        self.handle = handle
        self.index = index
        self.processes = processes
        self.pcie_throughput = pcie_throughput
        self.current = ""  # the NVML call in progress, for hang reports
        self.static: dict[str, Any] = {"driver": driver, "cuda_driver": cuda_driver}
        self._noted: set[tuple[str, int]] = set()
        self._gpm: list[Any] | None = None
        self._gpm_primed = False
        self._clock_events_fn = "nvmlDeviceGetCurrentClocksEventReasons"
        self._mig_handles: list[Any] = []
        self._procs = ProcessReader(self)

    # -- calls ---------------------------------------------------------------------------
    def call(self, fn: str, *args: Any, handle: Any = None) -> Any:
        """Call ``lib.fn(handle, *args)``; None when unsupported, DeviceFatal when gone."""
        self.current = fn
        try:
            return getattr(self.lib, fn)(self.handle if handle is None else handle, *args)
        except self.lib.NVMLError as exc:
            code = int(exc.value)
            if code in FATAL:
                raise DeviceFatal(fn, code) from None
            self._note(fn, code, exc)
            return None

    def attempt(self, fn: str, *args: Any, handle: Any = None) -> tuple[Any, int]:
        """Like ``call``, but with the NVML return code (0 on success) for the caller to judge.

        NOT_FOUND is not noted: for some calls it is an answer ("no samples yet").
        """
        self.current = fn
        try:
            return getattr(self.lib, fn)(self.handle if handle is None else handle, *args), 0
        except self.lib.NVMLError as exc:
            code = int(exc.value)
            if code in FATAL:
                raise DeviceFatal(fn, code) from None
            if code != NOT_FOUND:
                self._note(fn, code, exc)
            return None, code

    def _note(self, fn: str, code: int, exc: Exception) -> None:
        if (fn, code) in self._noted:
            return
        self._noted.add((fn, code))
        if code in (NOT_SUPPORTED, NOT_FOUND):
            log.debug("GPU %d: %s not supported: field absent", self.index, fn)
        elif code == FUNCTION_NOT_FOUND:
            log.warning(
                "GPU %d: %s is not in this driver's NVML; the field stays absent "
                "(upgrade the driver, or use an nvidia-ml-py matching it)",
                self.index,
                fn,
            )
        elif code == NO_PERMISSION:
            log.info("GPU %d: %s needs more privileges; field absent", self.index, fn)
        else:
            log.warning("GPU %d: %s failed (%s); field absent", self.index, fn, exc)

    # -- static --------------------------------------------------------------------------
    def read_static(self) -> None:
        """Identity and fixed limits, read once; a fatal error here marks the GPU broken."""
        s = self.static
        s["uuid"] = _text(self.call("nvmlDeviceGetUUID") or f"GPU-unknown-{self.index}")
        s["name"] = _text(self.call("nvmlDeviceGetName") or "unknown")
        pci = self.call("nvmlDeviceGetPciInfo")
        s["pci_bus_id"] = _text(pci.busId) if pci is not None else ""
        s["serial"] = _maybe_text(self.call("nvmlDeviceGetSerial"))
        s["vbios"] = _maybe_text(self.call("nvmlDeviceGetVbiosVersion"))
        arch = self.call("nvmlDeviceGetArchitecture")
        s["arch"] = ARCHS.get(arch) if arch is not None else None
        s["sm_clock_max_mhz"] = self.call("nvmlDeviceGetMaxClockInfo", CLOCK_SM)
        s["mem_clock_max_mhz"] = self.call("nvmlDeviceGetMaxClockInfo", CLOCK_MEM)
        s["power_default_limit_w"] = _watts(self.call("nvmlDeviceGetPowerManagementDefaultLimit"))
        limits = self.call("nvmlDeviceGetPowerManagementLimitConstraints")
        s["power_min_limit_w"] = _watts(limits[0]) if limits else None
        s["power_max_limit_w"] = _watts(limits[1]) if limits else None
        s["temp_slowdown_c"] = _float(self.call("nvmlDeviceGetTemperatureThreshold", 1))
        s["temp_shutdown_c"] = _float(self.call("nvmlDeviceGetTemperatureThreshold", 0))
        s["pcie_gen_max"] = self.call("nvmlDeviceGetMaxPcieLinkGeneration")
        s["pcie_width_max"] = self.call("nvmlDeviceGetMaxPcieLinkWidth")
        support = self.call("nvmlGpmQueryDeviceSupport")
        if support is not None and support.isSupportedDevice:
            try:
                self._gpm = [self.lib.nvmlGpmSampleAlloc(), self.lib.nvmlGpmSampleAlloc()]
            except self.lib.NVMLError as exc:
                self._note("nvmlGpmSampleAlloc", int(exc.value), exc)

    def identity(self, error: GpuError | None = None) -> Gpu:
        """A Gpu with identity only (and an error, when the device could not be read)."""
        s = self.static
        return Gpu(
            index=self.index,
            uuid=s.get("uuid", f"GPU-unknown-{self.index}"),
            pci_bus_id=s.get("pci_bus_id", ""),
            name=s.get("name", "unknown"),
            driver=s["driver"],
            cuda_driver=s["cuda_driver"],
            serial=s.get("serial"),
            vbios=s.get("vbios"),
            arch=s.get("arch"),
            error=error,
        )

    # -- one sample ----------------------------------------------------------------------
    def read(self) -> Gpu:
        """Read everything that moves; DeviceFatal propagates to the caller."""
        gpu = self.identity()
        for key in (
            "sm_clock_max_mhz",
            "mem_clock_max_mhz",
            "power_default_limit_w",
            "power_min_limit_w",
            "power_max_limit_w",
            "temp_slowdown_c",
            "temp_shutdown_c",
            "pcie_gen_max",
            "pcie_width_max",
        ):
            setattr(gpu, key, self.static.get(key))
        c = self.call
        gpu.sm_clock_mhz = c("nvmlDeviceGetClockInfo", CLOCK_SM)
        gpu.mem_clock_mhz = c("nvmlDeviceGetClockInfo", CLOCK_MEM)
        gpu.graphics_clock_mhz = c("nvmlDeviceGetClockInfo", CLOCK_GRAPHICS)
        gpu.video_clock_mhz = c("nvmlDeviceGetClockInfo", CLOCK_VIDEO)
        gpu.temp_c = _float(c("nvmlDeviceGetTemperature", TEMP_GPU))
        gpu.power_w = _watts(c("nvmlDeviceGetPowerUsage"))
        gpu.power_limit_w = _watts(c("nvmlDeviceGetPowerManagementLimit"))
        gpu.power_enforced_limit_w = _watts(c("nvmlDeviceGetEnforcedPowerLimit"))
        util = c("nvmlDeviceGetUtilizationRates")
        if util is not None:
            gpu.util_gpu_pct, gpu.util_mem_pct = int(util.gpu), int(util.memory)
        enc, dec = c("nvmlDeviceGetEncoderUtilization"), c("nvmlDeviceGetDecoderUtilization")
        gpu.util_enc_pct = int(enc[0]) if enc is not None else None
        gpu.util_dec_pct = int(dec[0]) if dec is not None else None
        self._memory(gpu)
        self._clock_events(gpu)
        fan = c("nvmlDeviceGetFanSpeed")
        gpu.fan_pct = fan if fan is not None and 0 <= fan <= 100 else None
        pstate = c("nvmlDeviceGetPerformanceState")
        gpu.pstate = pstate if pstate is not None and 0 <= pstate <= 15 else None
        gen, width = c("nvmlDeviceGetCurrPcieLinkGeneration"), c("nvmlDeviceGetCurrPcieLinkWidth")
        gpu.pcie_gen = gen or None
        gpu.pcie_width = width or None
        power_v, thermal_v = (
            c("nvmlDeviceGetViolationStatus", POLICY_POWER),
            c("nvmlDeviceGetViolationStatus", POLICY_THERMAL),
        )
        gpu.throttle_power_ns = int(power_v.violationTime) if power_v is not None else None
        gpu.throttle_thermal_ns = int(thermal_v.violationTime) if thermal_v is not None else None
        self._fields(gpu)
        self._retired_pages(gpu)
        self._mig(gpu)
        self._gpm_metrics(gpu)
        # One source per GPU for the life of the process: GPM (an average over the interval)
        # where it exists, else NVML's 20 ms snapshot; never one then the other.
        nvml_pcie = self.pcie_throughput == "nvml" or (
            self.pcie_throughput == "auto" and self._gpm is None
        )
        if nvml_pcie:
            tx, rx = (
                c("nvmlDeviceGetPcieThroughput", PCIE_TX),
                c("nvmlDeviceGetPcieThroughput", PCIE_RX),
            )
            gpu.pcie_tx_bytes_per_s = tx * 1024.0 if tx is not None else None
            gpu.pcie_rx_bytes_per_s = rx * 1024.0 if rx is not None else None
        if self.processes:
            # On a MIG GPU processes live on the instances, not on the parent handle.
            handles = (
                [(m.uuid, h) for m, h in zip(gpu.mig, self._mig_handles, strict=True)]
                if gpu.mig_mode
                else [(gpu.uuid, self.handle)]
            )
            gpu.processes = self._procs.read(handles)
        return gpu

    def _memory(self, gpu: Gpu) -> None:
        mem = self.call("nvmlDeviceGetMemoryInfo", MEMORY_V2)
        if mem is None:  # drivers before r510 have no v2 (and so no reserved figure)
            mem = self.call("nvmlDeviceGetMemoryInfo")
        if mem is not None:
            gpu.fb_total_bytes, gpu.fb_free_bytes, gpu.fb_used_bytes = (
                int(mem.total),
                int(mem.free),
                int(mem.used),
            )
            reserved = getattr(mem, "reserved", None)
            gpu.fb_reserved_bytes = int(reserved) if reserved is not None else None

    def _clock_events(self, gpu: Gpu) -> None:
        fn = self._clock_events_fn
        if fn == "nvmlDeviceGetCurrentClocksEventReasons":
            # Drivers before r535 only have the older name; switch once, quietly.
            self.current = fn
            try:
                mask = self.lib.nvmlDeviceGetCurrentClocksEventReasons(self.handle)
            except self.lib.NVMLError as exc:
                if int(exc.value) in FATAL:
                    raise DeviceFatal(fn, int(exc.value)) from None
                if int(exc.value) != FUNCTION_NOT_FOUND:
                    self._note(fn, int(exc.value), exc)
                    return
                self._clock_events_fn = fn = "nvmlDeviceGetCurrentClocksThrottleReasons"
                mask = self.call(fn)
        else:
            mask = self.call(fn)
        if mask is not None:
            gpu.clock_event_reasons = [
                reason_name(1 << bit) for bit in range(64) if mask & (1 << bit)
            ]

    def _fields(self, gpu: Gpu) -> None:
        ids = [(fid, scope) for fid, scope, _, _ in FIELDS] + [(FIELD_RECOVERY_ACTION, 0)]
        values = self.call("nvmlDeviceGetFieldValues", ids)
        if values is None:
            return
        for (_fid, _scope, attr, scale), fv in zip(FIELDS, values, strict=False):
            if fv.nvmlReturn != 0:
                continue
            raw = getattr(fv.value, _VALUE_ATTR.get(fv.valueType, "ullVal"))
            if scale is None:
                setattr(gpu, attr, bool(raw))
            elif attr == "mem_temp_c":
                setattr(gpu, attr, float(raw) if 0 < raw < 200 else None)  # 0: no sensor
            else:
                setattr(gpu, attr, int(raw * scale))
        recovery = values[len(FIELDS)] if len(values) > len(FIELDS) else None
        if recovery is not None and recovery.nvmlReturn == 0:
            action = int(getattr(recovery.value, _VALUE_ATTR.get(recovery.valueType, "uiVal")))
            gpu.recovery_action = RECOVERY_ACTIONS.get(action, f"action_{action}")

    def _retired_pages(self, gpu: Gpu) -> None:
        """Page retirement: Volta and older (Ampere+ remaps rows and says 'not supported')."""
        if gpu.remap_correctable_rows is not None:
            return
        sbe = self.call("nvmlDeviceGetRetiredPages", RETIRED_SBE)
        if sbe is None:
            return
        dbe = self.call("nvmlDeviceGetRetiredPages", RETIRED_DBE)
        pending = self.call("nvmlDeviceGetRetiredPagesPendingStatus")
        gpu.retired_pages_sbe = len(sbe)
        gpu.retired_pages_dbe = len(dbe) if dbe is not None else None
        gpu.retired_pages_pending = bool(pending) if pending is not None else None

    def _mig(self, gpu: Gpu) -> None:
        mode = self.call("nvmlDeviceGetMigMode")
        if mode is None:
            return
        gpu.mig_mode, gpu.mig_mode_pending = bool(mode[0]), bool(mode[1])
        self._mig_handles = []
        if not gpu.mig_mode:
            return
        for slot in range(self.call("nvmlDeviceGetMaxMigDeviceCount") or 0):
            handle = self.call("nvmlDeviceGetMigDeviceHandleByIndex", slot)
            if handle is None:
                continue
            self._mig_handles.append(handle)
            mem = self.call("nvmlDeviceGetMemoryInfo", handle=handle)
            gpu.mig.append(
                MigDevice(
                    uuid=_text(self.call("nvmlDeviceGetUUID", handle=handle) or ""),
                    gi_id=self.call("nvmlDeviceGetGpuInstanceId", handle=handle),
                    ci_id=self.call("nvmlDeviceGetComputeInstanceId", handle=handle),
                    name=_maybe_text(self.call("nvmlDeviceGetName", handle=handle)),
                    fb_total_bytes=int(mem.total) if mem is not None else None,
                    fb_used_bytes=int(mem.used) if mem is not None else None,
                    fb_free_bytes=int(mem.free) if mem is not None else None,
                )
            )

    def _gpm_metrics(self, gpu: Gpu) -> None:
        """GPM (Hopper+): the DCGM profiling metrics, from two samples one interval apart."""
        if self._gpm is None:
            return
        previous, current = self._gpm
        if self.call("nvmlGpmSampleGet", current) is None:
            return
        self._gpm = [current, previous]
        if not self._gpm_primed:
            self._gpm_primed = True
            return
        wanted = [m for m in GPM_METRICS if m < 20 or self.pcie_throughput in ("auto", "gpm")]
        request = self.lib.c_nvmlGpmMetricsGet_t()
        request.version = GPM_METRICS_GET_VERSION
        request.numMetrics = len(wanted)
        request.sample1, request.sample2 = previous, current
        for i, metric in enumerate(wanted):
            request.metrics[i].metricId = metric
        self.current = "nvmlGpmMetricsGet"
        try:
            self.lib.nvmlGpmMetricsGet(request)
        except self.lib.NVMLError as exc:
            self._note("nvmlGpmMetricsGet", int(exc.value), exc)
            return
        for i, metric in enumerate(wanted):
            result = request.metrics[i]
            if result.nvmlReturn != 0:
                continue
            attr, scale = GPM_METRICS[metric]
            value = float(result.value)
            setattr(gpu, attr, _pct(value) if scale == 1 else max(0.0, value * scale))


def _maybe_text(value: Any) -> str | None:
    return _text(value) if value not in (None, b"", "") else None


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def _watts(milliwatts: Any) -> float | None:
    return milliwatts / 1000.0 if milliwatts is not None else None
